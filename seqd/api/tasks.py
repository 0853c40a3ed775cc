"""Tasks of task steps: /tasks."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from msgspec import UNSET, Meta

from seqd import task_models
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import STORE
from seqd.errors import Invalid
from seqd.times import from_rfc3339

TAG = "tasks"


class TaskListQuery(ListQuery, kw_only=True):
    """Tasks in the order they were made."""

    status: Annotated[task_models.TaskStatus, Meta(description="only this status")] | None = None
    # (Any text: an assignee with a line break matches no task.)
    assignee: (
        Annotated[str, Meta(min_length=1, max_length=200, description="only this assignee's")]
        | None
    ) = None


@route(
    "GET",
    "/tasks",
    summary="List tasks (of task steps), by status and assignee",
    tag=TAG,
    query=TaskListQuery,
    responses={200: task_models.TaskList},
)
async def list_tasks(request: web.Request) -> web.Response:
    query = read_query(request, TaskListQuery)
    data, after, total = await request.app[STORE].tasks.list(
        tenant_of(request),
        status=query.status,
        assignee=query.assignee,
        limit=query.limit,
        after=decode_token(query.page_token),
    )
    return respond(
        task_models.TaskList(data=data, next_page_token=encode_token(after), total=total)
    )


@route(
    "GET",
    "/tasks/{id}",
    summary="Get a task",
    tag=TAG,
    responses={200: task_models.TaskEnvelope},
    errors=(404,),
)
async def get_task(request: web.Request) -> web.Response:
    task = await request.app[STORE].tasks.get(tenant_of(request), request.match_info["id"])
    return respond(task_models.TaskEnvelope(task=task))


@route(
    "PATCH",
    "/tasks/{id}",
    summary="Change a task's title, assignee or due time",
    tag=TAG,
    body=task_models.TaskPatch,
    responses={200: task_models.TaskEnvelope},
    errors=(404, 409),
)
async def patch_task(request: web.Request) -> web.Response:
    body = await read_body(request, task_models.TaskPatch)
    changes: dict[str, Any] = {}
    if body.title is not UNSET:
        changes["title"] = body.title
    if body.assignee is not UNSET:
        changes["assignee"] = body.assignee
    if body.due_at is not UNSET:
        try:
            changes["due_at"] = None if body.due_at is None else from_rfc3339(body.due_at)
        except ValueError:
            raise Invalid.field("due_at", "not an RFC 3339 time") from None
    task = await request.app[STORE].tasks.patch(
        tenant_of(request), request.match_info["id"], changes
    )
    return respond(task_models.TaskEnvelope(task=task))


@route(
    "POST",
    "/tasks/{id}/complete",
    summary="Complete a task; a blocking task's enrollment goes on to its next step",
    tag=TAG,
    body=task_models.TaskComplete,
    responses={200: task_models.TaskEnvelope},
    errors=(404, 409),
)
async def complete_task(request: web.Request) -> web.Response:
    body = await read_body(request, task_models.TaskComplete)
    task = await request.app[STORE].tasks.complete(
        tenant_of(request), request.match_info["id"], body.outcome
    )
    return respond(task_models.TaskEnvelope(task=task))
