-- Argo CD health of a VirtualEnvironmentMigration (vemigrate.io/v1alpha1), from its status only:
--   Progressing  while in flight (Pending, Validating, Transferring, Switchover, Finalizing, RollingBack),
--                while the operator has not yet seen the latest spec (status.observedGeneration),
--                and while Queued for what ends by itself: a concurrency limit, a HypervisorHost not
--                yet created, a retry's backoff (the message says the failure that caused the retry)
--   Suspended    while Queued for its maintenance window (spec.notBefore): paused on purpose
--   Healthy      Succeeded (reason Migrated, DryRun or AlreadyOnTarget); and Cancelled when the spec
--                asked for it (spec.action: Cancel): what Git declares is what happened, the VE stays
--                on its source untouched
--   Degraded     Failed (status.failure says why); Cancelled without spec.action: Cancel
--   Unknown      a phase this script does not know (a newer operator)
-- Written for Argo CD's sandbox (gopher-lua, Lua 5.1): the base and table libraries only, no string
-- library (so no string methods either), only `..` and tostring.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function progress(status)
  local p = status.progress
  if p == nil or p.percent == nil then
    return ""
  end
  local text = " " .. tostring(p.percent) .. "%"
  if p.etaSeconds ~= nil and p.etaSeconds > 0 then
    text = text .. ", about " .. tostring(p.etaSeconds) .. " s left"
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Pending: waiting for the operator"
  return hs
end

local phase = status.phase
local generation = obj.metadata.generation
local final = phase == "Succeeded" or phase == "Failed" or phase == "Cancelled"

if phase == "Succeeded" then
  local done = condition(status, "Succeeded")
  hs.status = "Healthy"
  if done ~= nil and done.reason ~= nil then
    hs.message = "Succeeded (" .. done.reason .. ")"
    if done.message ~= nil and done.message ~= "" then
      hs.message = hs.message .. ": " .. done.message
    end
  else
    hs.message = "Succeeded"
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local failure = status.failure
  if failure ~= nil and failure.reason ~= nil then
    hs.message = "Failed (" .. failure.reason .. ")"
    if failure.message ~= nil and failure.message ~= "" then
      hs.message = hs.message .. ": " .. failure.message
    end
  else
    hs.message = "Failed"
  end
  return hs
end

if phase == "Cancelled" then
  if obj.spec ~= nil and obj.spec.action == "Cancel" then
    hs.status = "Healthy"
    hs.message = "Cancelled as spec.action asks; the VE stays on its source"
  else
    hs.status = "Degraded"
    hs.message = "Cancelled, though spec.action does not ask for it"
  end
  return hs
end

if not final and generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = phase .. ": waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if phase == "Queued" then
  local waiting = condition(status, "Progressing")
  local why = status.queuedReason or ""
  if waiting ~= nil and waiting.reason == "MaintenanceWindow" then
    hs.status = "Suspended"
    hs.message = "Queued: " .. why
  elseif status.nextAttemptTime ~= nil and status.failure ~= nil and status.failure.reason ~= nil then
    hs.status = "Progressing"
    hs.message = "Queued to retry after " .. status.failure.reason
    if status.failure.message ~= nil and status.failure.message ~= "" then
      hs.message = hs.message .. ": " .. status.failure.message
    end
    hs.message = hs.message .. " (" .. why .. ")"
  else
    hs.status = "Progressing"
    hs.message = "Queued: " .. why
  end
  return hs
end

if phase == "Pending" or phase == "Validating" or phase == "Transferring" or phase == "Switchover"
    or phase == "Finalizing" or phase == "RollingBack" then
  hs.status = "Progressing"
  hs.message = phase
  if phase ~= "RollingBack" then
    -- The copy's progress; a rollback undoes it, so its figures would only mislead.
    hs.message = phase .. progress(status)
  end
  local moving = condition(status, "Progressing")
  if moving ~= nil and moving.status == "Unknown" then
    -- A host cannot be observed: the operator waits and observes, it never aborts (invariant 3).
    hs.message = hs.message .. "; waiting: " .. (moving.message or moving.reason or "a host cannot be observed")
  elseif phase == "RollingBack" and status.failure ~= nil and status.failure.reason ~= nil then
    hs.message = hs.message .. " after " .. status.failure.reason
  end
  return hs
end

hs.status = "Unknown"
hs.message = "phase " .. tostring(phase) .. " is unknown to this health check"
return hs
