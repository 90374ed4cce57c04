"""Where a playbook run's time goes: the slowest tasks, printed after the recap.

The systemd tier enables it for every run it makes (its logs in test-output/systemd/),
so a run that grew slower says which tasks did.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_times
    type: aggregate
    short_description: the slowest tasks of a run
    description: Prints the 25 slowest tasks (wall time from their start to the next task's) after the recap.
"""

SHOWN = 25


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self._started = time.monotonic()

    def _close_current(self) -> None:
        if self._current is not None:
            name, began = self._current
            self._times[name] = self._times.get(name, 0.0) + time.monotonic() - began
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._close_current()
        where = (task.get_path() or "").rpartition("/ansible/")[2]  # roles/NAME/tasks/FILE.yml:LINE
        self._current = (f"{where} {task.get_name()}", time.monotonic())

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_playbook_on_stats(self, stats) -> None:
        self._close_current()
        total = time.monotonic() - self._started
        self._display.display(f"TASK TIMES (slowest {SHOWN} of {len(self._times)}; run {total:.1f} s, "
                              f"tasks {sum(self._times.values()):.1f} s)")
        for name, took in sorted(self._times.items(), key=lambda kv: -kv[1])[:SHOWN]:
            self._display.display(f"{took:7.1f} s  {name}")
