"""Prime Factors: a CPU-bound ``to_parallel`` step that uses two cores in one container.

One pipeline: TCP source (4-byte big-endian length + a decimal integer) -> ``factor``
(``to_parallel``, trial division in pure Python, ``processes=2``) -> TCP sink writing
``n: p1 p2 ...`` lines.

``processes=2`` runs the step in two worker processes behind the vertex's one gRPC socket, so
one pod computes on two cores (the manifest requests two CPUs for it); the results are matched
to their requests by id. Without it a Python step uses one core per pod whatever the pod has.

    nfbuilder run apps/prime_factors.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002
"""

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Prime Factors")
    ab.new_pipeline("factors", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to_parallel(factor)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> int:
    return int(bs)


def factors_of(n: int) -> list[int]:
    """The prime factors of ``n`` in ascending order: ``factors_of(12) == [2, 2, 3]``."""
    out = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1 if d == 2 else 2
    if n > 1:
        out.append(n)
    return out


@wallaroo.computation(name="factor", processes=2)
def factor(n: int) -> tuple[int, list[int]]:
    return n, factors_of(n)


@wallaroo.encoder
def encoder(result: tuple[int, list[int]]) -> bytes:
    n, factors = result
    return f"{n}: {' '.join(map(str, factors))}\n".encode()
