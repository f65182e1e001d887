"""Print pip constraints pinning every dependency of pyproject.toml (the
package's and its test extras') to its lower bound: `name>=1.2; marker`
becomes `name==1.2; marker`. pip then installs the oldest versions the bounds
admit, and the tests show whether the bounds still hold.

    python3 tests/pyversions/lowest.py [pyproject.toml] > lowest.txt

Plain text matching, no TOML parser: it runs before anything is installed, on
Python 3.9 too (no tomllib there). Only the [project] tables are read (the
build-system's requirements are not the package's).
"""

import re
import sys

# "name[extras]>=1.2,<2; marker" inside a TOML string; extras are dropped
# (pip refuses them in constraints).
REQUIREMENT = re.compile(r'"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;"\s]*)[^;"]*(;[^"]*)?"')


def lowest(text: str) -> list:
    start = text.index("[project]")
    end = text.find("[project.scripts]", start)
    project = text[start:end if end >= 0 else len(text)]
    pins = []
    for line in project.splitlines():
        line = line.split("#", 1)[0]  # requirement strings hold no "#": the rest is a comment
        for name, version, marker in REQUIREMENT.findall(line):
            pins.append(f"{name}=={version}{marker}")
    return pins


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"
    with open(path, encoding="utf-8") as fh:
        pins = lowest(fh.read())
    if not pins:
        sys.exit(f"no `name>=version` requirements found in {path}")
    print("\n".join(pins))
