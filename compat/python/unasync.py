#!/usr/bin/env python3
"""Generate test_sync_compat.py from test_async_compat.py, the one source of the pymongo
compatibility scenarios.

Why generated, and in this direction: the two suites ran the same scenarios through pymongo's
AsyncMongoClient and MongoClient and were kept as two hand-edited near copies. pymongo itself
writes its synchronous API as the asynchronous one with the `async`/`await` keywords taken out
(its "synchro" step); the scenarios here are written once, asynchronously, and the synchronous
suite is the same text with the same small set of rewrites below. Removing keywords is
mechanical; adding them (sync to async) would need to know which calls return awaitables.

The rewrites, in order (each a regular expression over the source text):
- the module docstring is replaced by the generated file's own (it names its source);
- AsyncMongoClient -> MongoClient; `import asyncio` -> `import time`;
  `await asyncio.sleep(` -> `time.sleep(`;
- harness helpers with a blocking twin: `h.ctl_X(` -> `h.ctl_X_sync(`;
- `async def` / `async with` / `async for` -> `def` / `with` / `for`; every other `await ` is
  dropped (a parenthesised `(await x).y` becomes `(x).y`, which is the same expression);
- DRIVER "python-async" -> "python-sync" (the name in the result files).

Usage: `unasync.py` rewrites test_sync_compat.py; `unasync.py --check` exits 1 if it is stale
(compat/run runs that before the python suite, so CI refuses an out-of-date copy).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "test_async_compat.py"
TARGET = HERE / "test_sync_compat.py"

SYNC_DOCSTRING = '''"""pymongo's synchronous client (MongoClient), unchanged, straight against the upstream and
through mongomux: every scenario of compat/scenarios.json, compared (harness.py).

GENERATED from test_async_compat.py by unasync.py: do not edit; edit the async source and run
`compat/python/unasync.py` (compat/run refuses a stale copy). The scenarios are the same, run the
way a synchronous application uses pymongo (pymongo generates its synchronous API from the
asynchronous one the same way).
"""'''

REWRITES = [
    (r"\bAsyncMongoClient\b", "MongoClient"),
    (r"^import asyncio$", "import time"),
    (r"\bawait asyncio\.sleep\(", "time.sleep("),
    (r"\bh\.(ctl_\w+)\(", r"h.\1_sync("),
    (r"\basync (def|with|for)\b", r"\1"),
    (r"\bawait ", ""),
    (r'^DRIVER = "python-async"$', 'DRIVER = "python-sync"'),
]


def generate(source: str) -> str:
    body = re.sub(r'\A""".*?"""', lambda _: SYNC_DOCSTRING, source, count=1, flags=re.S)
    assert body != source, "the async source must start with its module docstring"
    for pattern, replacement in REWRITES:
        body = re.sub(pattern, replacement, body, flags=re.M)
    leftover = re.search(r"\b(async|await|asyncio)\b", body.split('"""', 2)[2])
    assert leftover is None, f"unasync left {leftover.group(0)!r} in the sync suite: add a rewrite"
    return body


def main() -> int:
    want = generate(SOURCE.read_text())
    if sys.argv[1:] == ["--check"]:
        if TARGET.read_text() != want:
            print(f"{TARGET.name} is stale: run compat/python/unasync.py", file=sys.stderr)
            return 1
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
