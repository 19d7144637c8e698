"""Static checks of the Slicer module (issue 3, must-show 3): every widget the code uses exists in the .ui, every
SlicerParameterName is a parameter-node field, and the module file parses without Slicer."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "TextPromptSeg" / "TextPromptSeg.py"
UI = ROOT / "Resources" / "UI" / "TextPromptSeg.ui"


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in TextPromptSeg.py")


def test_every_widget_used_in_code_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used in TextPromptSeg.py but absent from the .ui: {sorted(missing)}"
    assert {"segmentButton", "cancelButton", "progressBar", "promptsTextEdit"} <= used


def test_every_parameter_name_is_a_parameter_node_field():
    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName values without a parameter-node field: {unknown}"
    assert {"inputVolume", "outputSegmentation", "model", "device", "startSlice", "axis"} <= set(bound.values())
    assert fields["inputVolume"] == "vtkMRMLScalarVolumeNode"


def test_combo_box_choices_match_what_the_logic_accepts():
    widgets = _ui_widgets()

    def items(name):
        return [i.find("property/string").text for i in widgets[name].findall("item")]

    assert items("deviceComboBox") == ["auto", "cuda", "mps", "cpu"]
    assert items("axisComboBox") == ["auto", "axial", "coronal", "sagittal"]
    assert items("directionComboBox") == ["both", "forward", "backward"]


def test_cmake_and_s4ext_agree():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    s4ext = (ROOT / "TextPromptSeg.s4ext").read_text()
    assert "EXTENSION_DEPENDS PyTorch" in cmake.replace('"', "") and re.search(r"^depends\s+PyTorch", s4ext, re.M)
    module_cmake = (ROOT / "TextPromptSeg" / "CMakeLists.txt").read_text()
    assert "TextPromptSegLib" in module_cmake and "Resources" in module_cmake and "TextPromptSegLogic" in module_cmake
