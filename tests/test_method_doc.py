"""docs/METHOD.md names the function that implements each definition: every `module:attr` it cites exists, and the
repository cites that page (not a design file a user does not have)."""
import importlib
import os
import re

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_function_exists():
  text = open(os.path.join(_REPO, "docs", "METHOD.md"), encoding="utf-8").read()
  cites = re.findall(r"`((?:rods_jax|configs)[\w.]*):([\w.]+)`", text)
  assert len(cites) >= 40
  for module, attr in cites:
    obj = importlib.import_module(module)
    for part in attr.split("."):
      assert hasattr(obj, part), f"docs/METHOD.md cites {module}:{attr}, which does not exist"
      obj = getattr(obj, part)
  modules = re.findall(r"`(rods_jax(?:\.\w+)+)`", text)
  for module in modules:
    importlib.import_module(module)


def test_sources_cite_method_md_not_a_design_file():
  bad = []
  for top in ("rods_jax", "launch", "configs", "tests", "docs", "tools", "colabs"):
    for d, _, files in os.walk(os.path.join(_REPO, top)):
      for f in files:
        if f.endswith((".py", ".md", ".ipynb")) and f != os.path.basename(__file__):
          for i, line in enumerate(open(os.path.join(d, f), encoding="utf-8"), 1):
            if re.search(r"DESIGN(\.md)? ?§|rods_paper §|reference/\w+\.md", line):
              bad.append(f"{os.path.relpath(os.path.join(d, f), _REPO)}:{i}")
  assert not bad, bad
