"""Rewrite the golden manifests ``apps/<name>.pipeline.yaml`` from the example apps.

Run it (``make regen``) after a change that is meant to alter the emitted YAML, then review the
diff before committing::

    python scripts/regen_golden.py            # every app
    python scripts/regen_golden.py reverse    # just some

It refuses to run when the ``CI`` environment variable is set: in CI the goldens are checked,
never rewritten.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    if "CI" in os.environ:
        print(
            "regen_golden: refusing to rewrite the golden files because CI is set "
            f"(CI={os.environ['CI']!r}); goldens are regenerated on a developer machine with "
            "'make regen' and committed after review.",
            file=sys.stderr,
        )
        return 1
    sys.path.insert(0, str(ROOT))
    from apps import goldens

    names = argv or sorted(goldens.ARGS)
    unknown = [n for n in names if n not in goldens.ARGS]
    if unknown:
        print(f"regen_golden: unknown app(s) {', '.join(unknown)}; known: "
              f"{', '.join(sorted(goldens.ARGS))}", file=sys.stderr)
        return 1
    for name in names:
        path = goldens.golden_path(name)
        text = goldens.render(name)
        old = path.read_text() if path.exists() else None
        path.write_text(text)
        state = "unchanged" if old == text else ("created" if old is None else "UPDATED")
        print(f"{path.relative_to(ROOT)}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
