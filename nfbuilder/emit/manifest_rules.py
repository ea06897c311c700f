"""The Numaflow controller's rules for a Pipeline (``ValidatePipeline``), plus run-time traps.

These are the checks a manifest can pass at ``kubectl apply`` and still fail later: the controller
marks the Pipeline ``Failed`` and deploys nothing, or the data plane misbehaves (a duration that is
not a Go duration, a source with no type, a Kafka ``config`` line it drops). Per-vertex rules are
here; graph rules (edges, connectivity, cycles) are in ``manifest_graph``.

Values of the wrong type are left to the schema check: these rules only look at well-typed values.

    >>> check_rules({"metadata": {"name": "p"}, "spec": {"vertices": [], "edges": []}})
    [('spec.vertices', 'the pipeline has no source vertex; ...'), ...]
"""

from __future__ import annotations

import re
from typing import Any

from nfbuilder.emit.manifest_graph import Graph, check_graph
from nfbuilder.emit.manifest_schema import Issue, at

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1035_HELP = "lower-case letters, digits and '-', starting with a letter"
MAX_NAME_SUM = 53  # "{pipeline}-{vertex}-headless" must fit in a 63-character Service name

SOURCE_TYPES = ("generator", "http", "kafka", "nats", "jetstream", "pulsar", "sqs", "udsource",
                "serving")
SINK_TYPES = ("log", "blackhole", "kafka", "udsink", "sqs", "pulsar", "serve")
SECONDARY_SINK_TYPES = ("log", "blackhole", "kafka", "udsink", "sqs", "pulsar")
WINDOW_FIELDS = {"fixed": ("length",), "sliding": ("length", "slide"), "session": ("timeout",),
                 "accumulator": ("timeout",)}
STORAGE_TYPES = ("persistentVolumeClaim", "emptyDir", "no_store")
RESERVED_CONTAINER_NAMES = frozenset({
    "init", "numa", "udf", "udsink", "transformer", "udsource", "udsi", "init-side-inputs",
    "side-inputs-synchronizer", "fb-udsink", "ons-udsink",
})
SERVING_LABEL = "numaflow.numaproj.io/serving-pipeline-name"

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*)(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go ``time.ParseDuration`` string, or None if Go would reject it.

    >>> parse_go_duration("1h30m"), parse_go_duration("0"), parse_go_duration("60")
    (5400.0, 0.0, None)
    """
    s, sign = text, 1.0
    if s[:1] in ("-", "+"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        return None
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or (not m.group(1) and m.group(2) in (None, ".")):
            return None
        total += float((m.group(1) or "0") + (m.group(2) or "")) * _UNIT_SECONDS[m.group(3)]
        pos = m.end()
    return sign * total


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _image_missing(container: Any) -> bool:
    image = _d(container).get("image")
    return not (isinstance(image, str) and image.strip())


class _Checker:
    """Collects issues for one Pipeline; one method per part of the spec."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.issues: list[Issue] = []
        self.meta = _d(manifest.get("metadata"))
        self.spec = _d(manifest.get("spec"))
        name = self.meta.get("name")
        self.pipeline = name if isinstance(name, str) else ""
        self.graph = Graph.from_spec(self.spec)

    def add(self, path: str, message: str) -> None:
        self.issues.append((path, message))

    def duration(self, path: str, value: Any, what: str) -> float | None:
        """Check a Go duration string; returns its seconds when valid."""
        if not isinstance(value, str):
            return None
        seconds = parse_go_duration(value)
        if seconds is None:
            bare = re.fullmatch(r"[0-9]+(\.[0-9]*)?", value.strip())
            hint = (f"add a unit, e.g. \"{value.strip()}s\"" if bare else
                    "write numbers with units ns, us, ms, s, m or h")
            self.add(path, f"{what} {value!r} is not a Go duration (such as \"60s\", \"500ms\", "
                           f"\"1h30m\"); the controller cannot decode it; {hint}")
        return seconds

    def run(self) -> list[Issue]:
        self.pipeline_name()
        self.pipeline_settings()
        seen: dict[str, int] = {}
        for i, vertex in enumerate(_l(self.spec.get("vertices"))):
            if isinstance(vertex, dict):
                self.vertex(f"spec.vertices[{i}]", vertex, seen, i)
        self.issues.extend(check_graph(self.graph))
        return self.issues

    def pipeline_name(self) -> None:
        name = self.pipeline
        if name and (not DNS1035.fullmatch(name) or len(name) > 63):
            self.add("metadata.name",
                     f"pipeline name {name!r} is not a DNS-1035 label ({DNS1035_HELP}, at most 63 "
                     "characters); rename the pipeline")

    def pipeline_settings(self) -> None:
        self.limits("spec.limits", self.spec.get("limits"))
        wm = _d(self.spec.get("watermark"))
        self.duration("spec.watermark.maxDelay", wm.get("maxDelay"), "watermark.maxDelay")
        idle = wm.get("idleSource")
        if isinstance(idle, dict):
            self.idle_source("spec.watermark.idleSource", idle)
        names: dict[str, int] = {}
        for i, si in enumerate(_l(self.spec.get("sideInputs"))):
            path, name = f"spec.sideInputs[{i}]", _d(si).get("name")
            if isinstance(name, str):
                if name in names:
                    self.add(path, f"side input name {name!r} is also used by "
                                   f"spec.sideInputs[{names[name]}]; side input names must be "
                                   "unique, rename one")
                names.setdefault(name, i)
                if not DNS1035.fullmatch(name):
                    self.add(path, f"side input name {name!r} is not a DNS-1035 label "
                                   f"({DNS1035_HELP}); it names a Deployment, rename it")
            if isinstance(si, dict) and _image_missing(si.get("container")):
                self.add(at(path, "container"), f"side input {name!r} has no container image; "
                                                "set container.image")

    def idle_source(self, path: str, idle: dict[str, Any]) -> None:
        vals = {k: self.duration(at(path, k), idle.get(k), f"idleSource.{k}")
                for k in ("threshold", "incrementBy", "stepInterval", "initSourceDelay")}
        for key in ("threshold", "incrementBy"):
            if key not in idle:
                self.add(path, f"watermark.idleSource has no {key}; set it to a positive Go "
                               "duration such as \"5s\"")
            elif (val := vals[key]) is not None and val <= 0:
                self.add(at(path, key), f"watermark.idleSource.{key} is {idle[key]!r}; it must "
                                        "be greater than 0")
        thr, inc, delay = vals["threshold"], vals["incrementBy"], vals["initSourceDelay"]
        if thr is not None and inc is not None and 0 < thr < inc:
            self.add(path, f"watermark.idleSource.threshold {idle['threshold']!r} is smaller than "
                           f"incrementBy {idle['incrementBy']!r}; make threshold >= incrementBy")
        if delay is not None and (delay <= 0 or (thr is not None and delay < thr)):
            self.add(at(path, "initSourceDelay"),
                     f"watermark.idleSource.initSourceDelay {idle['initSourceDelay']!r} must be "
                     "greater than 0 and at least threshold; raise it or remove it")

    def limits(self, path: str, limits: Any) -> None:
        lim = _d(limits)
        self.duration(at(path, "readTimeout"), lim.get("readTimeout"), "limits.readTimeout")
        rate = _d(lim.get("rateLimit"))
        for key in ("rampUpDuration", "ttl"):
            self.duration(at(at(path, "rateLimit"), key), rate.get(key), f"rateLimit.{key}")
        cool = _d(_d(_d(rate.get("modes")).get("goBackN"))).get("coolDownPeriod")
        self.duration(at(path, "rateLimit.modes.goBackN.coolDownPeriod"), cool,
                      "goBackN.coolDownPeriod")

    def vertex(self, path: str, v: dict[str, Any], seen: dict[str, int], index: int) -> None:
        name = v.get("name")
        if not isinstance(name, str):
            return  # the schema reports the missing name
        self.vertex_name(path, name, seen, index)
        kinds = [k for k in ("source", "udf", "sink") if k in v]
        if len(kinds) != 1:
            got = f"sets {' and '.join(kinds)}" if kinds else "sets none of them"
            self.add(path, f"vertex {name!r} {got}; set exactly one of source, udf or sink")
        self.common(path, name, v)
        if kinds == ["source"]:
            self.source(path, name, v)
        elif kinds == ["udf"]:
            self.udf(path, name, v)
        elif kinds == ["sink"]:
            self.sink(path, name, v)

    def vertex_name(self, path: str, name: str, seen: dict[str, int], index: int) -> None:
        if not DNS1035.fullmatch(name):
            self.add(at(path, "name"), f"vertex name {name!r} is not a DNS-1035 label "
                                       f"({DNS1035_HELP}); rename the step")
        if name in seen:
            self.add(at(path, "name"), f"vertex name {name!r} is also used by "
                                       f"spec.vertices[{seen[name]}]; vertex names must be "
                                       "unique, rename one of them")
        seen.setdefault(name, index)
        total = len(self.pipeline) + len(name)
        if total > MAX_NAME_SUM:
            self.add(at(path, "name"),
                     f"pipeline name {self.pipeline!r} plus vertex name {name!r} is {total} "
                     f"characters, over {MAX_NAME_SUM} (the Service "
                     f"'{self.pipeline}-{name}-headless' must fit in 63); shorten the vertex or "
                     "pipeline name")

    def common(self, path: str, name: str, v: dict[str, Any]) -> None:
        """Rules that apply to every vertex kind."""
        self.limits(at(path, "limits"), v.get("limits"))
        parts = _int(v.get("partitions"))
        if parts is not None and parts < 0:
            self.add(at(path, "partitions"), f"vertex {name!r} sets partitions: {parts}; it must "
                                             "be >= 0")
        self.scale(at(path, "scale"), name, v)
        unavailable = _d(_d(v.get("updateStrategy")).get("rollingUpdate")).get("maxUnavailable")
        if isinstance(unavailable, str) and not unavailable.endswith("%"):
            self.add(at(path, "updateStrategy.rollingUpdate.maxUnavailable"),
                     f"maxUnavailable {unavailable!r} of vertex {name!r} is a string without '%'; "
                     "write an integer or a percentage such as \"25%\"")
        for field in ("initContainers", "sidecars"):
            for i, c in enumerate(_l(v.get(field))):
                cname = _d(c).get("name")
                if isinstance(cname, str) and cname in RESERVED_CONTAINER_NAMES:
                    self.add(at(at(path, field), i),
                             f"container name {cname!r} in {field} of vertex {name!r} is reserved "
                             f"by Numaflow ({', '.join(sorted(RESERVED_CONTAINER_NAMES))}); rename "
                             "the container")
        defined = {_d(s).get("name") for s in _l(self.spec.get("sideInputs"))
                   if isinstance(_d(s).get("name"), str)}
        listed: set[str] = set()
        for i, si in enumerate(_l(v.get("sideInputs"))):
            if not isinstance(si, str):
                continue  # the schema reports the type
            if si in listed:
                self.add(at(at(path, "sideInputs"), i),
                         f"vertex {name!r} lists side input {si!r} twice; list it once")
            elif si not in defined:
                self.add(at(at(path, "sideInputs"), i),
                         f"vertex {name!r} uses side input {si!r}, which is not defined in "
                         "spec.sideInputs; define it or remove it from the vertex")
            listed.add(si)

    def scale(self, path: str, name: str, v: dict[str, Any]) -> None:
        scale = _d(v.get("scale"))
        lo, hi = _int(scale.get("min")), _int(scale.get("max"))
        for key, val in (("min", lo), ("max", hi)):
            if val is not None and val < 0:
                self.add(at(path, key), f"scale.{key} of vertex {name!r} is {val}; it must be >= 0")
        if lo is not None and hi is not None and 0 <= hi < lo:
            self.add(path, f"scale.min ({lo}) of vertex {name!r} is greater than scale.max ({hi}); "
                           "make min <= max")
        if self.graph.is_ordered(name):
            for key in ("min", "max"):
                if key in scale:
                    self.add(path, f"ordered vertices must not set scale.min/max: vertex {name!r} "
                                   f"sets scale.{key}: {scale[key]!r}; its replicas are fixed to "
                                   f"its partition count, so remove scale.{key} and set partitions "
                                   "instead")
        if "cron" in scale and "source" not in v:
            self.add(at(path, "cron"), f"vertex {name!r} is not a source but sets scale.cron; "
                                       "cron scaling is for source vertices only, remove it")
        elif "cron" in scale and scale.get("disabled") is True:
            self.add(at(path, "cron"), f"vertex {name!r} sets scale.cron with scale.disabled: "
                                       "true; remove one of them")

    def source(self, path: str, name: str, v: dict[str, Any]) -> None:
        src, spath = _d(v.get("source")), at(path, "source")
        types = [t for t in SOURCE_TYPES if t in src]
        if not types:
            self.add(spath, f"source of vertex {name!r} sets no source type; set exactly one of "
                            f"{', '.join(SOURCE_TYPES)} (a typeless source fails at run time)")
        elif len(types) > 1:
            self.add(spath, f"source of vertex {name!r} sets several types ({', '.join(types)}); "
                            "set exactly one")
        if "udsource" in src and _image_missing(_d(src["udsource"]).get("container")):
            self.add(at(spath, "udsource"), f"source.udsource of vertex {name!r} has no container "
                                            "image; set udsource.container.image")
        if "transformer" in src and _image_missing(_d(src["transformer"]).get("container")):
            self.add(at(spath, "transformer"), f"source.transformer of vertex {name!r} has no "
                                               "container image; set transformer.container.image")
        gen = _d(src.get("generator"))
        for key in ("duration", "jitter"):
            self.duration(at(spath, f"generator.{key}"), gen.get(key), f"generator.{key}")
        self.kafka_config(at(spath, "kafka.config"), name, _d(src.get("kafka")).get("config"))
        self.sqs_account(spath, name, src)
        parts = _int(v.get("partitions"))
        if parts is not None and parts > 1:
            self.add(at(path, "partitions"), f"source vertex {name!r} sets partitions: {parts}; a "
                                             "source must have at most 1, remove it")
        if _l(v.get("sidecars")):
            self.add(at(path, "sidecars"), f"source vertex {name!r} sets sidecars, which Numaflow "
                                           "does not allow on sources; remove them")

    def udf(self, path: str, name: str, v: dict[str, Any]) -> None:
        udf, upath = _d(v.get("udf")), at(path, "udf")
        if _image_missing(udf.get("container")):
            self.add(at(upath, "container"), f"udf of vertex {name!r} has no container image; set "
                                             "udf.container.image (every UDF is a container)")
        group = udf.get("groupBy")
        if isinstance(group, dict):
            self.reduce(at(upath, "groupBy"), name, group, _int(v.get("partitions")))

    def reduce(self, path: str, name: str, group: dict[str, Any], parts: int | None) -> None:
        window = _d(group.get("window"))
        kinds = [k for k in WINDOW_FIELDS if k in window]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            self.add(at(path, "window"), f"reduce vertex {name!r}: groupBy.window sets {got}; set "
                                         f"exactly one of {', '.join(WINDOW_FIELDS)}")
        for kind in kinds:
            wpath, body = at(at(path, "window"), kind), _d(window.get(kind))
            for key in WINDOW_FIELDS[kind]:
                if key not in body:
                    self.add(wpath, f"reduce vertex {name!r}: groupBy.window.{kind} needs {key!r} "
                                    "(a Go duration such as \"60s\"); add it")
                self.duration(at(wpath, key), body.get(key), f"window.{kind}.{key}")
        self.duration(at(path, "allowedLateness"), group.get("allowedLateness"),
                      "groupBy.allowedLateness")
        storage = group.get("storage")
        stored = [k for k in STORAGE_TYPES if k in _d(storage)]
        if len(stored) != 1:
            got = ", ".join(stored) if stored else "no storage"
            self.add(at(path, "storage"), f"reduce vertex {name!r}: groupBy.storage has {got}; set "
                                          "exactly one of persistentVolumeClaim, emptyDir: {} or "
                                          "no_store: {}")
        if parts is not None and parts > 1 and group.get("keyed") is not True:
            self.add(path, f"reduce vertex {name!r} sets partitions: {parts} but groupBy.keyed is "
                           "not true; a non-keyed reduce must have at most 1 partition, set keyed: "
                           "true or partitions: 1")

    def sink(self, path: str, name: str, v: dict[str, Any]) -> None:
        sink, spath = _d(v.get("sink")), at(path, "sink")
        types = [t for t in SINK_TYPES if t in sink]
        if len(types) != 1:
            got = f"sets {', '.join(types)}" if types else "sets no sink type"
            self.add(spath, f"sink of vertex {name!r} {got}; set exactly one of "
                            f"{', '.join(SINK_TYPES)} (write log: {{}}, not log:)")
        if "serve" in sink and SERVING_LABEL not in _d(self.meta.get("labels")):
            self.add(at(spath, "serve"), f"sink of vertex {name!r} is a serve sink, which only a "
                                         "ServingPipeline may generate; use another sink type")
        self.sink_body(spath, name, sink, "sink")
        for extra in ("fallback", "onSuccess"):
            if isinstance(sink.get(extra), dict):
                body = sink[extra]
                present = [t for t in SINK_TYPES if t in body]
                if len(present) != 1 or present[0] not in SECONDARY_SINK_TYPES:
                    shown = ", ".join(present) if present else "no type"
                    self.add(at(spath, extra), f"sink.{extra} of vertex {name!r} has {shown}; set "
                                               f"exactly one of {', '.join(SECONDARY_SINK_TYPES)}")
                self.sink_body(at(spath, extra), name, body, f"sink.{extra}")
        self.retry(at(spath, "retryStrategy"), name, sink)

    def sink_body(self, path: str, name: str, body: dict[str, Any], what: str) -> None:
        if "udsink" in body and _image_missing(_d(body["udsink"]).get("container")):
            self.add(at(path, "udsink"), f"{what}.udsink of vertex {name!r} has no container "
                                         "image; set udsink.container.image")
        self.kafka_config(at(path, "kafka.config"), name, _d(body.get("kafka")).get("config"))
        self.sqs_account(path, name, body)

    def sqs_account(self, path: str, name: str, body: dict[str, Any]) -> None:
        account = _d(body.get("sqs")).get("queueOwnerAWSAccountID")
        if isinstance(account, str) and not re.fullmatch(r"[0-9]{12}", account):
            self.add(at(path, "sqs.queueOwnerAWSAccountID"),
                     f"queueOwnerAWSAccountID {account!r} of vertex {name!r} is not 12 digits; "
                     "write the 12-digit AWS account id")

    def retry(self, path: str, name: str, sink: dict[str, Any]) -> None:
        retry = _d(sink.get("retryStrategy"))
        backoff, bpath = _d(retry.get("backoff")), at(path, "backoff")
        interval = self.duration(at(bpath, "interval"), backoff.get("interval"), "backoff.interval")
        cap = self.duration(at(bpath, "cap"), backoff.get("cap"), "backoff.cap")
        if backoff.get("steps") == 0:
            self.add(at(bpath, "steps"), f"sink of vertex {name!r}: backoff.steps is 0; set a "
                                         "positive number of retries")
        factor, jitter = backoff.get("factor"), backoff.get("jitter")
        if isinstance(factor, (int, float)) and factor < 1:
            self.add(at(bpath, "factor"), f"sink of vertex {name!r}: backoff.factor is {factor}; "
                                          "it must be >= 1")
        if isinstance(jitter, (int, float)) and not 0 <= jitter < 1:
            self.add(at(bpath, "jitter"), f"sink of vertex {name!r}: backoff.jitter is {jitter}; "
                                          "it must be in [0, 1)")
        floor = interval if interval is not None else 0.001
        if cap is not None and cap < floor:
            self.add(at(bpath, "cap"), f"sink of vertex {name!r}: backoff.cap {backoff['cap']!r} "
                                       "is below the interval (default 1ms); raise the cap")
        if retry.get("onFailure") == "fallback" and not any(
                t in _d(sink.get("fallback")) for t in SECONDARY_SINK_TYPES):
            self.add(at(path, "onFailure"), f"sink of vertex {name!r} sets onFailure: fallback "
                                            "but no sink.fallback type; add sink.fallback (e.g. "
                                            "a udsink) or use onFailure: retry")

    def kafka_config(self, path: str, name: str, config: Any) -> None:
        if not isinstance(config, str):
            return
        for n, line in enumerate(config.splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            colons = text.count(":")
            key, _, value = text.partition(":")
            if colons != 1:
                self.add(path, f"kafka config line {n} {text!r} of vertex {name!r} has {colons} "
                               "':' characters; the data plane keeps only 'key: value' lines with "
                               "exactly one ':' and silently drops this one (e.g. a URL value); "
                               "remove it or set the option another way")
            elif not key.strip() or not value.strip() or line[:1].isspace():
                self.add(path, f"kafka config line {n} {text!r} of vertex {name!r} is not a flat "
                               "'key: value' pair; nested YAML is not supported, write flat "
                               "librdkafka properties such as 'auto.offset.reset: earliest'")


def check_rules(manifest: dict[str, Any]) -> list[Issue]:
    """Apply the controller's Pipeline rules; returns ``(path, message)`` issues."""
    return _Checker(manifest).run()
