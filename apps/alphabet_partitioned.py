"""Alphabet, partitioned: count votes per letter with one state per letter (Wallaroo's
``alphabet_partitioned`` example, 0.4.3).

One pipeline: TCP source (``>I`` length 5, then ``>sI``: a letter and a vote count) ->
``add votes`` on state ``"letter state"`` partitioned by letter (keys ``a``..``z``) -> TCP sink
writing the letter's new total framed: ``>I`` 9, then ``>sQ``. Each letter's total is updated
serially; different letters can be counted in parallel.

    nfbuilder run apps/alphabet_partitioned.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

Feed it with ``apps/data/alphabet_partitioned.py`` (1000 random votes by default).
"""

import pickle
import string
import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    letter_partitions = list(string.ascii_lowercase)

    ab = wallaroo.ApplicationBuilder("alphabet")
    ab.new_pipeline("alphabet", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_state_partition(add_votes, TotalVotes, "letter state", partition, letter_partitions)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


# The 0.4 example spelled out pickle-based hooks; nfbuilder uses them for messages and state.
def serialize(o: object) -> bytes:
    return pickle.dumps(o)


def deserialize(bs: bytes) -> object:
    return pickle.loads(bs)


class Votes:
    """A letter and a number of votes (an input, or a letter's running total)."""

    def __init__(self, letter: str, votes: int) -> None:
        self.letter = letter
        self.votes = votes


class TotalVotes:
    """The state of one partition: the running total of one letter."""

    def __init__(self) -> None:
        self.letter = "X"
        self.votes = 0

    def update(self, votes: Votes) -> None:
        self.letter = votes.letter
        self.votes += votes.votes

    def get_votes(self) -> Votes:
        # A fresh object, so later updates cannot leak into messages still in flight.
        return Votes(self.letter, self.votes)


@wallaroo.partition
def partition(data: Votes) -> str:
    return data.letter[0]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> Votes:
    letter, count = struct.unpack(">sI", bs)
    return Votes(letter.decode("ascii"), count)


@wallaroo.state_computation(name="add votes")
def add_votes(data: Votes, state: TotalVotes) -> tuple[Votes, bool]:
    state.update(data)
    return (state.get_votes(), True)


@wallaroo.encoder
def encoder(data: Votes) -> bytes:
    return struct.pack(">IsQ", 9, data.letter.encode("ascii"), data.votes)
