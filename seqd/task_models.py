"""The API shapes of tasks (the task step kind: GET /v1/tasks), beside `models.py`."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from seqd.models import Assignee, Input, Output, Page, TaskTitle, Timestamp

DueAt = Annotated[
    str,
    Meta(max_length=64, description="RFC 3339", extra_json_schema={"format": "date-time"}),
]

TaskStatus = Literal["open", "completed", "timed_out"]
TaskOutcome = Annotated[str, Meta(max_length=2000, description="what came of it, free text")]


class Task(Output, kw_only=True):
    id: str
    sequence_id: str
    enrollment_id: str
    contact_id: str
    # The task step's index in its sequence.
    step: int
    title: str
    assignee: str | None = None
    status: TaskStatus
    # A blocking task holds its enrollment (paused, awaiting_task) until completed or due.
    blocking: bool = False
    on_timeout: Literal["continue", "cancel"] = "continue"
    due_at: Timestamp | None = None
    created_at: Timestamp
    updated_at: Timestamp
    # When it was completed or timed out.
    completed_at: Timestamp | None = None
    outcome: str | None = None


class TaskEnvelope(Output, kw_only=True):
    task: Task


class TaskList(Page, kw_only=True):
    data: list[Task]


class TaskPatch(Input, kw_only=True):
    """Only the fields present change; `null` clears the assignee or the due time. A new
    due time of an open blocking task is when its enrollment's hold ends."""

    title: TaskTitle | UnsetType = UNSET
    assignee: Assignee | UnsetType | None = UNSET
    due_at: DueAt | UnsetType | None = UNSET


class TaskComplete(Input, kw_only=True):
    outcome: TaskOutcome | None = None
