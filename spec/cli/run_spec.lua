-- spec/cli/run_spec.lua: `provider-host run`, as an operator runs it at a terminal: acquire,
-- bridge, execute with live output, release; the command's status is ours; Ctrl-C cancels.
local fake_paperclip = require("spec.support.fake_paperclip")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local sys = require("host.core.sys")

local KEY = "operator-real-key-0123456789abcdef"

-- The binary with a scrubbed env (PATH, TMPDIR at the spec's own dir, and extra).
local function spawn(args, tmp, extra)
  local env = { PATH = os.getenv("PATH"), TMPDIR = tmp }
  for k, v in pairs(extra or {}) do
    env[k] = v
  end
  local argv = { helpers.binary() }
  table.move(args, 1, #args, 2, argv)
  return assert(proc.spawn({ argv = argv, env = env, timeout = 60 }))
end

local function run(args, tmp, extra)
  return assert(spawn(args, tmp, extra):wait())
end

-- No lease directory left in tmp.
local function assert_released(tmp)
  for _, name in ipairs(fs.list(tmp) or {}) do
    assert.not_matches("^paperclip%-local%-", name)
  end
end

describe("provider-host run", function()
  it("runs the command on a lease, passes its status through, and releases", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-run-spec-")
      local r = run({ "run", "local", "--", "sh", "-c", "echo out; echo err >&2; exit 7" },
        tmp.path)
      assert.equal(7, r.exit_code)
      assert.equal("out\n", r.stdout)
      assert.equal("err\n", r.stderr)
      assert_released(tmp.path)
    end)
  end)

  it("gives the command a bridge: it calls the API with a per-run key", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-run-spec-")
      local api <close> = fake_paperclip.start({ api_key = KEY })
      local r = run({ "run", "local", "--bridge", api.url, "--bridge-key-env", "PH_KEY",
        "--run-id", "run-42", "--", "sh", "-c",
        'curl -sS -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me"'
          .. ' && env' }, tmp.path, { PH_KEY = KEY })
      assert.equal(0, r.exit_code, r.stderr)
      local seen = json.decode(r.stdout:match("^(%b{})"))
      assert.equal("run-42", seen.runId)
      assert.equal("Bearer " .. KEY, api:last().headers.authorization)
      assert.not_matches(KEY, r.stdout, 1, true) -- not in the command's env
      assert.not_matches(KEY, r.stderr, 1, true)
      assert_released(tmp.path)
    end)
  end)

  it("says what is wrong with its options", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-run-spec-")
      local cases = {
        { { "run", "local" }, "usage: provider%-host run NAME" },
        { { "run", "local", "--bridge", "http://x", "--", "true" }, "go together" },
        { { "run", "local", "--bridge", "http://x", "--bridge-key-env", "NOPE", "--", "true" },
          "NOPE: that environment variable is not set" },
        { { "run", "local", "--config", "[1]", "--", "true" }, "must be a JSON object" },
      }
      for _, case in ipairs(cases) do
        local r = run(case[1], tmp.path)
        assert.equal(2, r.exit_code)
        assert.matches(case[2], r.stderr)
      end
    end)
  end)

  it("cancels the command on Ctrl-C and still releases the lease", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-run-spec-")
      local marker = tmp.path .. "/started"
      local p = spawn({ "run", "local", "--", "sh", "-c", ": > " .. marker .. "; exec sleep 30" },
        tmp.path)
      helpers.eventually(function()
        return fs.stat(marker)
      end, "the command started")
      sys.kill(p.pid, "SIGINT")
      local r = assert(p:wait(30))
      assert.equal(130, r.exit_code)
      assert.matches("SIGINT: canceling the command", r.stderr)
      os.remove(marker)
      assert_released(tmp.path)
    end)
  end)
end)
