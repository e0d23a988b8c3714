"""A shipped system profile with some keys replaced, written where `--system PATH` can load it."""
from __future__ import annotations

import re
from pathlib import Path


def profile_copy(tmp: Path, system: str, **changes: str) -> Path:
    """`tmp/profiles/<system>.yaml` (a profile file must be named like the profile) with `key: value` lines
    replaced, or appended for keys the shipped profile lacks."""
    from lmsweep.configs import SYSTEMS
    text = (SYSTEMS / f"{system}.yaml").read_text()
    for key, value in changes.items():
        text, n = re.subn(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.MULTILINE)
        if not n:
            text += f"{key}: {value}\n"
    (tmp / "profiles").mkdir(exist_ok=True)
    path = tmp / "profiles" / f"{system}.yaml"
    path.write_text(text)
    return path
