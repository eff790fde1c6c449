"""``fer-exp explain``: feature maps per conv block and a Grad-CAM map for one face."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fer_experiments.cli.options import tracking_option
from fer_experiments.serving.detector import DEFAULT_DETECTOR


@click.command()
@click.argument("model_uri")
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder to write the pictures into [default: explain-<image name>].")
@click.option("--class", "class_name", default=None,
              help="Explain this class instead of the predicted one (Angry, Disgust, Fear, Happy, Sad, Surprise, "
                   "Neutral).")
@click.option("--no-detect", is_flag=True, help="Use the whole image as the face (48x48 crops never go through the "
                                                 "detector).")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True,
              help="Face detector for photos (see fer-exp predict).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.option("--no-log", is_flag=True, help="Do not log the pictures to the model's MLflow run.")
@tracking_option
def explain(model_uri: str, image: str, out_dir: str | None, class_name: str | None, no_detect: bool, detector: str,
            as_json: bool, no_log: bool, tracking_uri: str | None) -> None:
    """Show what the network looks at for one face: the feature maps after each conv block and a Grad-CAM map.

    MODEL_URI: runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias> or a local .keras file.
    IMAGE: a 48x48 face crop, or a photo in which the largest face found by the detector is explained.
    Writes feature-maps-block<b>.png per conv block, grad-cam.png, face.png and explain.json into --out. For a
    runs:/ model or a registered version the pictures are also logged to the model's run as
    explain/<image name>-<picture>.png, where `fer-exp report` shows the best trial's.
    """
    import shutil
    import tempfile

    import numpy as np

    from fer_experiments import EXPRESSIONS, IMAGE_SIZE
    from fer_experiments.errors import ConfigError, DataError
    from fer_experiments.evaluation.explain import explanation_images
    from fer_experiments.io import atomic_write_bytes, atomic_write_text, read_capped
    from fer_experiments.models.explain import explain as explain_face
    from fer_experiments.models.explain import explain_members, predict_one
    from fer_experiments.serving.detector import DEFAULT_MARGIN, DetectorConfig, FaceDetector
    from fer_experiments.serving.images import decode_image, encode_image, to_face_input
    from fer_experiments.tracking.model_io import load_keras_model

    class_index = None
    if class_name is not None:
        names = {n.lower(): i for i, n in enumerate(EXPRESSIONS)}
        if class_name.lower() not in names:
            raise ConfigError(f"--class {class_name!r}: expected one of {', '.join(EXPRESSIONS)}")
        class_index = names[class_name.lower()]
    data = read_capped(image)  # DataError naming the file when it cannot be read or is too large
    try:
        decoded = decode_image(data, max_bytes=max(len(data), 1))
    except DataError as exc:
        raise DataError(f"{image}: {exc}") from None
    gray = decoded.gray
    box = None
    if no_detect or gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        face = to_face_input(gray)
    else:
        boxes = FaceDetector(DetectorConfig(spec=detector)).detect(gray)
        if not boxes:
            raise DataError(f"{image}: no face found (use --no-detect to explain the whole image as one face)")
        box = max(boxes, key=lambda b: b.w * b.h)
        c = box.expand(DEFAULT_MARGIN, gray.shape[1], gray.shape[0])
        face = to_face_input(np.ascontiguousarray(gray[c.y:c.y + c.h, c.x:c.x + c.w]))
    model = load_keras_model(model_uri, tracking_uri)
    members = explain_members(model, face, class_index)
    # An ensemble: every member's maps, all for the ensemble's class (the first member's alone passed for the whole).
    ex = None if members else explain_face(model, face, class_index)
    probabilities = predict_one(model, face) if members else ex.probabilities
    explained = members[0][2].class_index if members else ex.class_index
    target = Path(out_dir or f"explain-{Path(image).stem}")
    written = []
    for prefix, one in ([(f"{name}-", m) for name, _, m in members] if members else [("", ex)]):
        for name, png in explanation_images(face, one).items():
            atomic_write_bytes(target / f"{prefix}{name}", png)
            written.append(str(target / f"{prefix}{name}"))
    atomic_write_bytes(target / "face.png", encode_image(face, ".png"))
    summary = {
        "model": model_uri, "image": image, "box": box.to_dict() if box else None,
        "predicted": EXPRESSIONS[int(np.argmax(probabilities))], "explained_class": EXPRESSIONS[explained],
        "probabilities": {n: round(float(p), 6) for n, p in zip(EXPRESSIONS, probabilities)},
        "files": written + [str(target / "face.png")],
    }
    if ex is not None:
        summary |= {"grad_cam_layer": ex.cam_layer,
                    "blocks": {name: list(maps.shape) for name, maps in ex.feature_maps.items()}}
    if members:
        summary["members"] = [{
            "member": name, "weight": round(weight, 6), "grad_cam_layer": m.cam_layer,
            "predicted": EXPRESSIONS[int(np.argmax(m.probabilities))],
            "probabilities": {n: round(float(p), 6) for n, p in zip(EXPRESSIONS, m.probabilities)},
            "files": [f for f in written if Path(f).name.startswith(f"{name}-")]} for name, weight, m in members]
    atomic_write_text(target / "explain.json", json.dumps(summary, indent=2) + "\n")
    if not no_log:
        from fer_experiments.cli.options import tracking_uri_or_default
        from fer_experiments.tracking import TrackedRun
        from fer_experiments.tracking.model_io import model_run_id

        run_id = model_run_id(model_uri, tracking_uri)
        if run_id is not None:
            run = TrackedRun(run_id, tracking_uri_or_default(tracking_uri))
            with tempfile.TemporaryDirectory() as tmp:
                for path in written:  # flat names: the study report lists the files directly in explain/
                    named = Path(tmp) / f"{Path(image).stem}-{Path(path).name}"
                    shutil.copyfile(path, named)
                    run.log_artifact(named, "explain")
            summary["logged_to_run"] = run_id
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    where = f" (face at x={box.x} y={box.y} w={box.w} h={box.h})" if box else ""
    probs = " ".join(f"{k} {v:.3f}" for k, v in summary["probabilities"].items())
    click.echo(f"{image}{where}: {summary['predicted']}  {probs}")
    if members:
        click.echo(f"  an ensemble of {len(members)}: each member's feature maps and Grad-CAM for "
                   f"{summary['explained_class']} (files <member>-*.png)")
        for m in summary["members"]:
            click.echo(f"  {m['member']} (weight {m['weight']:.3f}): {m['predicted']}, Grad-CAM on "
                       f"{m['grad_cam_layer']}")
    else:
        for name, shape in summary["blocks"].items():
            click.echo(f"  {name}: {shape[0]}x{shape[1]}x{shape[2]}")
        click.echo(f"  Grad-CAM for {summary['explained_class']} on {summary['grad_cam_layer']}")
    click.echo(f"written to {target}/: {', '.join(Path(p).name for p in summary['files'])}")
    if "logged_to_run" in summary:
        click.echo(f"logged to run {summary['logged_to_run']} under explain/")
