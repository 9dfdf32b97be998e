"""docs/deployment.md points at files that exist and commands that the stack defines."""

import re

from .conftest import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "deployment.md"


def test_every_deploy_path_in_the_guide_exists():
    text = GUIDE.read_text()
    # Paths, not `kubectl exec deploy/NAME` nor the `Dockerfile.$image` of a loop.
    found = re.findall(r"(?<![\w/.-])((?:deploy|tests/deploy)/[\w./-]+\w)(?![.\w$-])", text)
    paths = {p for p in found if not p.startswith("deploy/tunefleet-")}
    assert paths, "the guide names no deploy/ file"
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, f"docs/deployment.md names missing files: {missing}"


def test_guide_names_every_required_setting(compose):
    from .test_compose import REQUIRED_SECRETS

    text = GUIDE.read_text()
    for name in REQUIRED_SECRETS:
        assert f"`{name}`" in text, f"docs/deployment.md does not explain {name}"
