"""What running from the template image costs at start: start-to-running of a JupyterLab studio in a container
whose lower layer is the JupyterLab image (pulled from the loopback registry, unpacked once per digest) versus
one whose lower layer is the host's ``/`` (the platform's own JupyterLab), same run, alternating.

Runs the whole product twice side by side (``manage.py runstudios`` on embedded defaults, each in its own
temporary data dir, so each its own image cache): one with the default images, one with
``STUDIOS_TEMPLATE_IMAGES={"jupyterlab": ""}`` (no image: the host's ``/``). The image's first start (the pull
and unpack) is reported on its own; then RUNS starts each, timing Start (the POST) to ``running``.
With a second argument, another checkout of the project (the one before a change) serves a third platform with
the default images, started alongside: its image start is timed in the same rounds.
Needs `make images` first. Usage: .venv/bin/python bench/image_bench.py [RUNS] [CHECKOUT]
"""

import contextlib
import statistics
import sys
import time

from demo_platform import DemoUser, demo_platform

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BEFORE = sys.argv[2] if len(sys.argv) > 2 else ""


def start_to_running(user, studio_id, stop=True):
    began = time.perf_counter()
    user.post(f"/studios/{studio_id}/start/")
    user.wait_for(studio_id, "running")
    took = time.perf_counter() - began
    if stop:
        user.post(f"/studios/{studio_id}/stop/")
        user.wait_for(studio_id, "stopped")
    return took


def alternate(studios, runs):
    """Start each of ``studios`` ({name: (user, studio id)}) once, then ``runs`` times in turn; print each one's
    median start to running and its first start; {name: [seconds of each run]}."""
    first = {name: start_to_running(user, studio_id) for name, (user, studio_id) in studios.items()}
    times = {name: [] for name in studios}
    for _ in range(runs):
        for name, (user, studio_id) in studios.items():
            times[name].append(start_to_running(user, studio_id))
    for name in studios:
        listed = ", ".join(f"{t:.2f}" for t in times[name])
        print(
            f"{name}: start to running, median of {runs}: {statistics.median(times[name]):.2f} s (runs: {listed}); "
            f"first start (a fresh data dir or cache): {first[name]:.2f} s"
        )
    return times


def main():
    with contextlib.ExitStack() as stack:
        platforms = {
            "image": stack.enter_context(demo_platform(STUDIOS_LOCAL_ISOLATION="auto")),
            "host /": stack.enter_context(
                demo_platform(STUDIOS_LOCAL_ISOLATION="auto", STUDIOS_TEMPLATE_IMAGES='{"jupyterlab": ""}')
            ),
        }
        if BEFORE:
            platforms[f"image, {BEFORE}"] = stack.enter_context(demo_platform(BEFORE, STUDIOS_LOCAL_ISOLATION="auto"))
        users = {}
        for name, (base, password, _) in platforms.items():
            user = DemoUser(base, "maintain", password)
            users[name] = (user, user.add_studio("bench"))
        times = alternate(users, RUNS)

    difference = statistics.median(times["image"]) - statistics.median(times["host /"])
    print(f"the image adds {difference:+.2f} s to the median start")
    if BEFORE:
        change = statistics.median(times["image"]) - statistics.median(times[f"image, {BEFORE}"])
        print(f"this checkout's image start against {BEFORE}'s: {change:+.2f} s on the median")


if __name__ == "__main__":
    main()
