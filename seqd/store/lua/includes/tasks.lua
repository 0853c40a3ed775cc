-- Tasks of task steps (store/tasks.py): one hash per task, in its enrollment's shard, so
-- a task and the enrollment it holds change together. Listed per tenant in four ZSETs of
-- ids (scores 0): any status or one, any assignee or one (k_task_index: "" is any, an
-- assignee is "=" .. its name).
-- Task hash: t tenant, e enrollment, s sequence, c contact, i step, ti title, as assignee
-- (absent: none), st open | completed | timed_out, b "1" when blocking, to on_timeout,
-- d due ms (absent: none), ca created ms, ua updated ms, fa completed or timed out ms,
-- o the outcome given on completion.
-- Expects: rcall, tag, the enrollment include.

-- Add task `tid` (hash `t`) to, or take it out of (`cmd` ZADD | ZREM), the listings of
-- `status`, any assignee and its own; `status` "" is the any-status listings.
local function task_listings(cmd, t, tid, status)
  local args = cmd == 'ZADD' and {0, tid} or {tid}
  rcall(cmd, k_task_index(tag, t['t'], status, ''), unpack(args))
  if t['as'] then rcall(cmd, k_task_index(tag, t['t'], status, '=' .. t['as']), unpack(args)) end
end

-- The task as its events carry it (store/tasks.py `task_of` reads the same names).
local function task_data(tid, t)
  return {id = tid, enrollment_id = t['e'], sequence_id = t['s'],
          contact_id = t['c'], step = tonumber(t['i']), title = t['ti'],
          assignee = t['as'] or cjson.null, status = t['st'], blocking = t['b'] == '1',
          on_timeout = t['to'], due_at = tonumber(t['d']) or cjson.null,
          created_at = tonumber(t['ca']), updated_at = tonumber(t['ua']),
          completed_at = tonumber(t['fa']) or cjson.null, outcome = t['o'] or cjson.null}
end

local function task_event(etype, tid, t, now)
  emit(etype, t['t'], now, task_data(tid, t))
end

-- Move task `tid` to `status` (its hash read into `t`), with its listings and event.
local function task_finish(tid, t, status, now, etype)
  task_listings('ZREM', t, tid, t['st'])
  t['st'], t['fa'], t['ua'] = status, now, now
  rcall('HSET', k_task(tag, tid), 'st', status, 'fa', now, 'ua', now)
  task_listings('ZADD', t, tid, status)
  task_event(etype, tid, t, now)
end

-- An enrollment held by its task (paused, awaiting_task) goes on: active again.
local function task_release(id, e, now)
  if e['st'] ~= 'paused' then return end
  clear_pause(k_enrollment(tag, id), e)
  move_status(id, e, 'active', now)
  enrollment_event('sequence.enrollment.resumed', id, e, now, nil)
end

-- Settle a `task` outcome (store/settles.py TaskStep) of enrollment `id` (hash in `e`)
-- whose claim holds. `pass()` moves the enrollment past the step (the task id is then its
-- provider id). The task is made once per (enrollment, step): the enrollment's `p<step>`
-- names it from then on.
-- (advance checked `it.task_id` before writing anything.)
local function settle_task(id, e, it, now, pass)
  local ekey = k_enrollment(tag, id)
  local pfield = 'p' .. string.format('%d', it.step)
  local tid = e[pfield]
  local t = tid and to_table(rcall('HGETALL', k_task(tag, tid))) or {}
  if not t['st'] then
    tid = it.task_id
    local due_at = (tonumber(it.due_in) or -1) >= 0 and string.format('%d', now + it.due_in) or nil
    t = {t = e['t'], e = id, s = e['s'], c = e['c'], i = string.format('%d', it.step),
         ti = it.title or '', as = type(it.assignee) == 'string' and it.assignee or nil,
         st = 'open', b = it.blocking and '1' or nil, to = it.on_timeout or 'continue',
         d = due_at, ca = now, ua = now}
    local fields = {}
    for k, v in pairs(t) do fields[#fields + 1] = k; fields[#fields + 1] = v end
    rcall('HSET', k_task(tag, tid), unpack(fields))
    task_listings('ZADD', t, tid, '')
    task_listings('ZADD', t, tid, 'open')
    rcall('HSET', ekey, pfield, tid); e[pfield] = tid
    task_event('task.created', tid, t, now)
  end
  it.provider_id = tid
  local due = tonumber(t['d'])
  if t['st'] == 'open' and t['b'] == '1' and due and due <= tonumber(now) then
    task_finish(tid, t, 'timed_out', now, 'task.timed_out')
  end
  if t['st'] == 'timed_out' and t['b'] == '1' and t['to'] == 'cancel' then
    finish(id, e, 'cancelled', 'task_timed_out', now, {step = it.step, task_id = tid})
  elseif t['st'] == 'open' and t['b'] == '1' then
    -- Held: paused until the task is completed (completeTask) or comes due here again.
    if t['d'] then rcall('HSET', ekey, 'n', t['d']); e['n'] = t['d'] end
    if e['st'] == 'active' then
      finish(id, e, 'paused', 'awaiting_task', now, {step = it.step, task_id = tid})
    end
    if t['d'] then schedule(id, e['s'], t['d']) end
  else
    task_release(id, e, now)
    pass()
  end
end
