"""Write requirements/serve.txt: the serve extra's dependency closure, pinned.

Reads a `pip install --dry-run --report` JSON (argument 1) and prints pins.
"""

import json
import sys

with open(sys.argv[1]) as handle:
    report = json.load(handle)
pins = sorted(
    f"{item['metadata']['name'].lower()}=={item['metadata']['version']}"
    for item in report["install"]
    if item["metadata"]["name"] != "cxr-msn"
)
print("# The serve extra's dependency closure, pinned (what the Bento installs; no torch).")
print("# Regenerate with: make requirements")
print(*pins, sep="\n")
