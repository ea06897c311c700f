"""Word count: running count of every word in a text stream (Wallaroo's ``word_count`` example).

One pipeline: TCP source (``>I`` length + one line of UTF-8 text) -> ``split into words``
(``to_parallel``: lowercase, delete ASCII punctuation, split on whitespace; one message per word)
-> ``count word`` on state ``"word totals"`` partitioned by first letter (``a``..``z``, and ``!``
for every other first character) -> TCP sink writing ``"word => count\\n"`` per word.

As in Wallaroo 0.5 the partition test is ``"a" <= c <= "z"`` (0.4 wrote ``or``, which always held
and silently dropped words starting with anything else).

    nfbuilder run apps/word_count.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

Feed it one framed message per line (``apps/data/word_count.py`` generates a corpus); the last
count printed for a word is its total.
"""

import string

import nfbuilder as wallaroo

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    word_partitions = list(string.ascii_lowercase) + ["!"]

    ab = wallaroo.ApplicationBuilder("Word Count Application")
    ab.new_pipeline("Split and Count", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_parallel(split)
    ab.to_state_partition(count_word, WordTotals, "word totals", partition, word_partitions)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class WordCount:
    """A word and how many times it has been seen so far."""

    def __init__(self, word: str, count: int) -> None:
        self.word = word
        self.count = count


class WordTotals:
    """The state of one partition: counts of the words starting with its letter."""

    def __init__(self) -> None:
        self.word_totals: dict[str, int] = {}

    def update(self, word: str) -> None:
        self.word_totals[word] = self.word_totals.get(word, 0) + 1

    def get_count(self, word: str) -> WordCount:
        return WordCount(word, self.word_totals[word])


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> str:
    return bs.decode("utf-8")


@wallaroo.computation_multi(name="split into words")
def split(data: str) -> list[str]:
    return data.lower().translate(_DELETE_PUNCTUATION).split()


@wallaroo.partition
def partition(data: str) -> str:
    first = data[0]
    return first if "a" <= first <= "z" else "!"


@wallaroo.state_computation(name="count word")
def count_word(data: str, state: WordTotals) -> tuple[WordCount, bool]:
    state.update(data)
    return (state.get_count(data), True)


@wallaroo.encoder
def encoder(data: WordCount) -> bytes:
    return f"{data.word} => {data.count}\n".encode()
