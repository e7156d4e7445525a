-- Argo CD health of a HypervisorHost (vemigrate.io/v1alpha1), from its Reachable condition:
--   Healthy      the last probe reached the host (SSH with a verified host key, then its hypervisor)
--   Degraded     it did not: the condition's reason says why (HostUnreachable, HostKeyMismatch,
--                AuthenticationFailed, SecretNotFound, SecretForbidden, ...)
--   Progressing  not probed yet, or the latest spec not probed yet (status.observedGeneration)
--   Unknown      the condition is Unknown
-- Written for Argo CD's Lua 5.1 (gopher-lua).
local hs = {}
local status = obj.status
local reachable = nil
if status ~= nil and status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Reachable" then
      reachable = c
    end
  end
end

if reachable == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the first probe"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "waiting for a probe of generation " .. tostring(generation)
  return hs
end

local why = reachable.reason or ""
if reachable.message ~= nil and reachable.message ~= "" then
  why = why .. ": " .. reachable.message
end
if reachable.status == "True" then
  hs.status = "Healthy"
elseif reachable.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
hs.message = "Reachable " .. tostring(reachable.status) .. " (" .. why .. ")"
return hs
