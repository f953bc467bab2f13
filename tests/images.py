"""What the template images ship of the project, laid out as they lay it out."""

import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE_CODE = "/opt/studios"


def image_code(template, directory):
    """The image's /opt/studios, in ``directory``: what the template's Dockerfile copies there, nothing else
    (``COPY <source>... <destination>``: a destination ending in / is a folder, else the one source's new path)."""
    directory = Path(directory)
    for line in (PROJECT_ROOT / "images" / template / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, destination = line.split()[1:]
        assert destination.startswith(IMAGE_CODE + "/"), f"{template} copies project files outside {IMAGE_CODE}"
        target = directory / destination.removeprefix(IMAGE_CODE + "/")
        for source in map(PROJECT_ROOT.joinpath, sources):
            copy_to = target / source.name if destination.endswith("/") else target
            if source.is_dir():
                shutil.copytree(source, copy_to, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                copy_to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, copy_to)
    return directory
