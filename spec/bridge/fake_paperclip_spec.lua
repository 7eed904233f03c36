-- spec/bridge/fake_paperclip_spec.lua: the fake Paperclip API the bridge specs forward to
-- behaves like the server where they rely on it: the credential check, exact recording.
local fake_paperclip = require("spec.support.fake_paperclip")
local helpers = require("spec.helpers")
local http = require("host.http")
local json = require("host.json")

describe("fake Paperclip API", function()
  it("refuses a request without the real credential, and records it as it arrived", function()
    helpers.run(function()
      local api <close> = fake_paperclip.start({ api_key = "real-key" })
      local r = assert(http.request({ url = api.url .. "/api/agents/me?x=%41",
        headers = { Authorization = "Bearer bridge-token" } }))
      assert.equal(401, r.status)
      assert.equal("/api/agents/me", api:last().path)
      assert.equal("x=%41", api:last().query)
    end)
  end)

  it("echoes what it saw for an authorized request, with headers a bridge must drop", function()
    helpers.run(function()
      local api <close> = fake_paperclip.start({ api_key = "real-key" })
      local r = assert(http.request({ method = "POST", url = api.url .. "/api/issues/i1/comments",
        headers = { Authorization = "Bearer real-key", ["X-Paperclip-Run-Id"] = "run-1" },
        json = { body = "hi" } }))
      assert.equal(200, r.status)
      assert.equal("session=secret", r:header("set-cookie"))
      local seen = json.decode(r.body)
      assert.same({ method = "POST", path = "/api/issues/i1/comments", query = json.null,
        runId = "run-1", body = '{"body":"hi"}' }, seen)
    end)
  end)

  it("answers a route the spec set", function()
    helpers.run(function()
      local api <close> = fake_paperclip.start({ api_key = "k" })
      api:answer("GET", "/api/issues/i1", function()
        return 504, { ["x-paperclip-bridge-outcome"] = "indeterminate" }, "{}"
      end)
      local r = assert(http.request({ url = api.url .. "/api/issues/i1",
        headers = { Authorization = "Bearer k" } }))
      assert.equal(504, r.status)
      assert.equal("indeterminate", r:header("x-paperclip-bridge-outcome"))
    end)
  end)
end)
