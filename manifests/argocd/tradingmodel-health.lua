-- Argo CD health of a TradingModel (trading.io/v1alpha1), read from the status the operator writes.
-- Install: add this script to argocd-cm under the key
--   resource.customizations.health.trading.io_TradingModel
-- (Helm chart: configs.cm."resource.customizations.health.trading.io_TradingModel").
--   Healthy      Ready, and the operator has seen the current generation
--   Progressing  not seen yet, promoting or rolling out
--   Degraded     Failed or Conflict (the Ready condition's message says why and what to do)
--   Suspended    Archived: serving scaled to zero on purpose
local hs = { status = "Progressing", message = "Waiting for the operator to handle this TradingModel" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.message = "The operator has not handled generation " .. tostring(generation) .. " yet"
  return hs
end
local ready = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
local phase = obj.status.phase or ""
hs.message = phase
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
end
if phase == "Archived" then
  hs.status = "Suspended"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Conflict" then
  hs.status = "Degraded"
end
return hs
