-- host.bridge_routes: the bridge's default route table, as data (reference/bridge-upstream.md
-- section 2.5, upstream 2026.824.1). A request passes only when a rule has its exact method and
-- a pattern matching its canonical path (host.bridge_policy does the matching).
--
-- Pattern syntax: a path of "/"-separated segments, each either a literal ("agents") or a
-- parameter ":name", which matches exactly one non-empty segment. A parameter may carry a
-- literal suffix in the same segment (":type.txt" matches "claude.txt"): upstream's
-- /llms/agent-configuration/[^/]+\.txt needs it.
--
-- Upstream writes 58 regular expressions; three use an optional last segment
-- ("comments(?:/[^/]+)?") and two an alternation ("(?:start|stop|restart)"). Here each such
-- regex is one entry of UPSTREAM listing every pattern it stands for, and `rules` is the
-- expanded flat list (67 rules), each remembering the number of the regex it came from.
local M = {}

--- UPSTREAM[i] = { method, pattern, ... }: upstream's regex number i, in upstream's order,
--- written as the patterns it matches.
M.UPSTREAM = {
  -- Identity, inbox, agent self-management
  { "GET", "/api/agents/me" },
  { "GET", "/api/agents/me/inbox-lite" },
  { "GET", "/api/agents/me/inbox/mine" },
  { "GET", "/api/agents/:agentId" },
  { "GET", "/api/agents/:agentId/skills" },
  { "POST", "/api/agents/:agentId/skills/sync" },
  { "PATCH", "/api/agents/:agentId/instructions-path" },

  -- Company-level reads used to discover work and context
  { "GET", "/api/companies/:companyId" },
  { "GET", "/api/companies/:companyId/dashboard" },
  { "GET", "/api/companies/:companyId/agents" },
  { "GET", "/api/companies/:companyId/issues" },
  { "GET", "/api/companies/:companyId/projects" },
  { "GET", "/api/companies/:companyId/goals" },
  { "GET", "/api/companies/:companyId/org" },
  { "GET", "/api/companies/:companyId/approvals" },
  { "GET", "/api/companies/:companyId/routines" },
  { "GET", "/api/companies/:companyId/skills" },
  { "GET", "/api/projects/:projectId" },
  { "GET", "/api/goals/:goalId" },

  -- Issue lifecycle: read context, checkout, update, comment, document, release
  { "GET", "/api/issues/:issueId" },
  { "GET", "/api/issues/:issueId/heartbeat-context" },
  { "GET", "/api/issues/:issueId/comments", "/api/issues/:issueId/comments/:commentId" },
  { "POST", "/api/issues/:issueId/comments" },
  { "GET", "/api/issues/:issueId/documents", "/api/issues/:issueId/documents/:key" },
  { "GET", "/api/issues/:issueId/documents/:key/revisions" },
  { "PUT", "/api/issues/:issueId/documents/:key" },
  { "POST", "/api/issues/:issueId/checkout" },
  { "POST", "/api/issues/:issueId/release" },
  { "PATCH", "/api/issues/:issueId" },
  { "GET", "/api/issues/:issueId/approvals" },

  -- Work products
  { "GET", "/api/issues/:issueId/work-products" },
  { "POST", "/api/issues/:issueId/work-products" },
  { "PATCH", "/api/work-products/:workProductId" },

  -- Issue-thread interactions
  { "GET",
    "/api/issues/:issueId/interactions",
    "/api/issues/:issueId/interactions/:interactionId" },
  { "POST", "/api/issues/:issueId/interactions" },
  { "POST",
    "/api/issues/:issueId/interactions/:interactionId/accept",
    "/api/issues/:issueId/interactions/:interactionId/reject",
    "/api/issues/:issueId/interactions/:interactionId/respond",
    "/api/issues/:issueId/interactions/:interactionId/verdicts",
    "/api/issues/:issueId/interactions/:interactionId/withdraw" },

  -- Subtasks / delegation
  { "POST", "/api/companies/:companyId/issues" },

  -- Hiring: adapter and icon discovery, the approval-gated hire request
  { "GET", "/llms/agent-configuration.txt" },
  { "GET", "/llms/agent-configuration/:adapterType.txt" },
  { "GET", "/llms/agent-icons.txt" },
  { "GET", "/api/companies/:companyId/agent-configurations" },
  { "POST", "/api/companies/:companyId/agent-hires" },
  { "POST", "/api/issues/:issueId/approvals" },

  -- Approvals (request, read, comment)
  { "GET", "/api/approvals/:approvalId" },
  { "GET", "/api/approvals/:approvalId/issues" },
  { "GET", "/api/approvals/:approvalId/comments" },
  { "POST", "/api/approvals/:approvalId/comments" },
  { "POST", "/api/companies/:companyId/approvals" },

  -- Execution workspaces and runtime services
  { "GET", "/api/execution-workspaces/:workspaceId" },
  { "POST",
    "/api/execution-workspaces/:workspaceId/runtime-services/start",
    "/api/execution-workspaces/:workspaceId/runtime-services/stop",
    "/api/execution-workspaces/:workspaceId/runtime-services/restart" },

  -- Routines and their triggers
  { "GET", "/api/routines/:routineId" },
  { "GET", "/api/routines/:routineId/runs" },
  { "POST", "/api/companies/:companyId/routines" },
  { "PATCH", "/api/routines/:routineId" },
  { "POST", "/api/routines/:routineId/run" },
  { "POST", "/api/routines/:routineId/triggers" },
  { "PATCH", "/api/routine-triggers/:triggerId" },
  { "DELETE", "/api/routine-triggers/:triggerId" },
}

--- rules: the default rules, { method = , pattern = , upstream = i } each, in upstream's
--- order (UPSTREAM expanded: one rule per pattern).
M.rules = {}
for i, entry in ipairs(M.UPSTREAM) do
  for j = 2, #entry do
    M.rules[#M.rules + 1] = { method = entry[1], pattern = entry[j], upstream = i }
  end
end

return M
