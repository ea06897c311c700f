"""Alphabet: count votes per letter in one shared state (Wallaroo's ``alphabet`` example, 0.4.3).

One pipeline: TCP source (``>I`` length 5, then ``>sI``: a letter and a vote count) ->
``add votes`` on the single state ``"letter state"`` (``to_stateful``: one state object for the
whole app) -> TCP sink writing the letter's new total framed: ``>I`` 9, then ``>sQ``.

    nfbuilder run apps/alphabet.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

Feed it with ``apps/data/alphabet.py`` (1000 random votes by default); the last total per letter
is the answer.
"""

import pickle
import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("alphabet")
    ab.new_pipeline("alphabet", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_stateful(add_votes, AllVotes, "letter state")
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


class AllVotes:
    """The state: running totals for every letter seen so far."""

    def __init__(self) -> None:
        self.votes_by_letter: dict[str, Votes] = {}

    def update(self, votes: Votes) -> None:
        total = self.votes_by_letter.setdefault(votes.letter, Votes(votes.letter, 0))
        total.votes += votes.votes

    def get_votes(self, letter: str) -> Votes:
        # A fresh object: returning the stored one would let later updates leak into messages
        # still in flight.
        return Votes(letter, self.votes_by_letter[letter].votes)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> Votes:
    letter, count = struct.unpack(">sI", bs)
    return Votes(letter.decode("ascii"), count)


@wallaroo.state_computation(name="add votes")
def add_votes(data: Votes, state: AllVotes) -> tuple[Votes, bool]:
    state.update(data)
    return (state.get_votes(data.letter), True)


@wallaroo.encoder
def encoder(data: Votes) -> bytes:
    return struct.pack(">IsQ", 9, data.letter.encode("ascii"), data.votes)
