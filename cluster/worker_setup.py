"""Run in every worker process of an embedded local Ray started without its dashboard (Ray's
`worker_process_setup_hook`, set by `cluster.runtime.ray_session`). Kept tiny: every worker imports it.

Without the dashboard, Ray's State API has no server. Ray Train's placement-group cleaner (a detached
actor that asks the State API once a second whether the training controller is still alive) then logs
"Failed to query Ray Train Controller actor state" every second of every training run: hundreds of lines
in a quickstart. Nothing is lost by quieting it: an embedded Ray is shut down with the run, which removes
its placement groups anyway."""

from __future__ import annotations

import logging

_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_state_api_warnings() -> None:
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)
