-- spec/providers/exe-dev/conformance_spec.lua: upstream exe-dev 0.1.2's tests (providers.md 3.5,
-- assertions 1-38 and the extra ones) ported to the fake exe.dev, whose VMs are real sshd
-- processes on loopback. Upstream mocked `fetch` and `spawn("ssh")`; here the observable facts
-- are the API requests the fake received, what ran on the VM, and host.ssh's connections.
local config = require("providers.exe-dev.config")
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local manifest = require("host.cli.manifest")
local provider = require("providers.exe-dev")
local ssh = require("host.ssh")
local task = require("host.task")

local null = json.null
local WARN_SSH = "The Paperclip host must have SSH access to the created exe.dev VM, and its SSH "
  .. "key must be registered with exe.dev. The API token only covers provisioning."
local WARN_REUSE = "reuseLease keeps the VM alive between runs; this provider does not suspend "
  .. "retained VMs."

-- Shape-only fixtures for the key-format validator (upstream tests 5 and 6): their bodies are
-- well-formed base64 but they are not keys to anything and nothing ever authorizes them.
local VALID_OPENSSH = table.concat({
  "-----BEGIN OPENSSH PRIVATE KEY-----",
  "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gt",
  "ZWQyNTUxOQAAACBPzMxQp4Y6XCfDV2t6oWmqHkKx0K7C7w7q9F6gQ3jPbgAAAJjJ8jjE",
  "yfI4xAAAAAtzc2gtZWQyNTUxOQAAACBPzMxQp4Y6XCfDV2t6oWmqHkKx0K7C7w7q9F6g",
  "Q3jPbgAAAEDqLhB4kV1tw8m4gE9oNCkF2cJv0YnHQ8E5sHU3xKnD5k/MzFCnhjpcJ8NX",
  "a3qhaaoeQrHQrsLvDur0XqBDeM9uAAAAFXVzZXJAaG9zdAECAwQ=",
  "-----END OPENSSH PRIVATE KEY-----",
}, "\n")
local VALID_RSA_PEM = table.concat({
  "-----BEGIN RSA PRIVATE KEY-----",
  "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu",
  "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm",
  "o3qGy0t6z5tZbcgvflRslzu1HxXLpwYqQq2gMNw9UQAoHs3rDl+EzBjF6trBV5wF",
  "wQIhANwiwDR7TVlIRk5kbgPMd2dDgY8mAU1cQ8KbWvjVMmKxAiEAxYTUyVjwhfQy",
  "VJoR7T0n4XdR1n+W8Eth7AEPxnHfaQECIB5cNuqB9F1qC2pSyf6e+UAyl9rmKQXp",
  "-----END RSA PRIVATE KEY-----",
}, "\n")
local PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE+gT9 user@host"


describe("providers.exe-dev conformance", function()
  describe("health and validateConfig", function()
    local h = fake_exedev.harness()

    it("1. declares its lifecycle hooks, answers health and declares reusable leases", function()
      h.run(function()
        -- environmentValidateConfig is answered by the schema (schema.lua), as every call's
        for _, hook in ipairs({ "probe", "acquire_lease", "resume_lease",
          "release_lease", "destroy_lease", "realize_workspace", "execute", "cancel_execution" }) do
          assert.is_function(provider.hooks[hook], hook)
        end
        assert.is_true(provider.capabilities.reusableLeases)
        local s = h.session()
        local reply
        s.worker.write = function(line)
          reply = json.decode(line)
        end
        s.worker:handle_line(json.encode({ jsonrpc = "2.0", id = 1, method = "health" }))
        assert.equal("ok", reply.result.status)
      end)
    end)

    it("2. normalizes config exactly as upstream and warns about SSH access and reuse", function()
      h.run(function()
        h.env.EXE_API_KEY = "host-key"
        local r = assert(h.validate({
          apiUrl = "https://exe.dev",
          namePrefix = " Paperclip Sandbox ",
          image = " ubuntu:22.04 ",
          cpu = "4.8",
          memory = " 8GB ",
          disk = " 50GB ",
          env = { FOO = " bar " },
          integrations = { " github " },
          tags = "prod, sandbox",
          timeoutMs = "450000.9",
          reuseLease = true,
          sshPort = "2222",
        }))
        assert.same({
          ok = true,
          warnings = { WARN_SSH, WARN_REUSE },
          normalizedConfig = {
            apiKey = null,
            apiUrl = "https://exe.dev/exec",
            namePrefix = "paperclip-sandbox",
            sourceVm = null,
            image = "ubuntu:22.04",
            command = null,
            cpu = 4,
            memory = "8GB",
            disk = "50GB",
            comment = null,
            env = { FOO = "bar" },
            integrations = { "github" },
            tags = { "prod", "sandbox" },
            setupScript = null,
            prompt = null,
            timeoutMs = 450000,
            reuseLease = true,
            sshUser = null,
            sshPrivateKey = null,
            sshIdentityFile = null,
            sshPort = 2222,
            strictHostKeyChecking = "accept-new",
          },
        }, r)
      end)
    end)

    it("3. normalizes a trailing /exec/ without duplicating it", function()
      h.run(function()
        h.env.EXE_API_KEY = "host-key"
        local r = assert(h.validate({ apiUrl = "https://exe.dev/exec/" }))
        assert.is_true(r.ok)
        assert.equal("https://exe.dev/exec", r.normalizedConfig.apiUrl)
        for input, want in pairs({
          ["https://EXE.dev:443/api/"] = "https://exe.dev/api/exec",
          ["http://127.0.0.1:8080"] = "http://127.0.0.1:8080/exec",
          ["https://exe.dev/exec?x=1"] = "https://exe.dev/exec?x=1",
          ["https://exe.dev//exec//"] = "https://exe.dev/exec/exec", -- as upstream's URL
        }) do
          assert.equal(want, require("providers.exe-dev.api").normalize_url(input))
        end
      end)
    end)

    it("4. rejects an invalid config with upstream's errors, in upstream's order", function()
      h.run(function()
        local r = assert(h.validate({
          apiUrl = "not-a-url",
          cpu = 0,
          env = { ["BAD-KEY"] = "value" },
          sshPort = 70000,
          strictHostKeyChecking = "",
          timeoutMs = 0,
        }))
        assert.same({
          ok = false,
          warnings = { WARN_SSH },
          errors = {
            "apiUrl must be a valid URL.",
            "timeoutMs must be between 1 and 86400000.",
            "cpu must be greater than 0 when provided.",
            "sshPort must be between 1 and 65535.",
            "exe.dev environments require an API key in config or EXE_API_KEY.",
            "env contains an invalid key: BAD-KEY",
            "strictHostKeyChecking cannot be empty.",
          },
        }, r)
      end)
    end)

    it("refuses a host key policy OpenSSH would refuse (beyond upstream)", function()
      h.run(function()
        local r = assert(h.validate({ apiKey = "k", strictHostKeyChecking = "maybe" }))
        assert.is_false(r.ok)
        assert.matches("strictHostKeyChecking must be accept%-new, yes or no", r.errors[1])
        r = assert(h.validate({ apiKey = "k", strictHostKeyChecking = "off" }))
        assert.is_true(r.ok)
      end)
    end)

    it("17. warns that sourceVm ignores the settings `cp` does not take", function()
      h.run(function()
        h.env.EXE_API_KEY = "host-key"
        local r = assert(h.validate({
          sourceVm = "golden-vm",
          image = "ubuntu:22.04",
          env = { FOO = "bar" },
          setupScript = "echo custom",
        }))
        assert.is_true(r.ok)
        assert.same({
          WARN_SSH,
          "sourceVm copies an existing VM with `exe.dev cp`, which does not accept image, env, "
            .. "setupScript; these settings are ignored.",
        }, r.warnings)
      end)
    end)
  end)

  describe("sshPrivateKey validation", function()
    local h = fake_exedev.harness()

    it("5. accepts a valid OpenSSH PEM block", function()
      assert.is_nil(config.validate_key(VALID_OPENSSH))
    end)

    it("6. accepts a valid PKCS#1 RSA PEM block", function()
      assert.is_nil(config.validate_key(VALID_RSA_PEM))
    end)

    it("7. accepts a secret UUID as is (the save-time schema stage)", function()
      h.run(function()
        h.env.EXE_API_KEY = "host-key"
        local uuid = "11111111-1111-4111-8111-111111111111"
        local r = assert(h.validate({ apiKey = "api-key", sshPrivateKey = uuid }))
        assert.is_true(r.ok)
        assert.equal(uuid, r.normalizedConfig.sshPrivateKey)
        assert.is_nil(r.errors)
      end)
    end)

    it("8. treats empty and whitespace-only input as valid", function()
      assert.is_nil(config.validate_key(""))
      assert.is_nil(config.validate_key("   \n\n  "))
    end)

    it("9. rejects a public key", function()
      assert.matches("looks like a PUBLIC key", config.validate_key(PUBLIC))
    end)

    it("10. rejects a PuTTY .ppk file", function()
      local ppk = table.concat({
        "PuTTY-User-Key-File-3: ssh-ed25519",
        "Encryption: none",
        "Comment: imported-openssh-key",
        "Public-Lines: 2",
        "AAAAC3NzaC1lZDI1NTE5AAAAIE+gT9zMxQp4Y6XCfDV2t6oWmqHkKx0K7C7w7q9F6g",
        "Q3jP",
      }, "\n")
      assert.matches("PuTTY %.ppk", config.validate_key(ppk))
    end)

    it("11. rejects a missing END marker (a truncated paste)", function()
      local truncated = VALID_OPENSSH:gsub("\n[^\n]*$", "")
      assert.matches("missing its '%-%-%-%-%-END", config.validate_key(truncated))
    end)

    it("12. rejects a body with non-base64 characters", function()
      local garbled = "-----BEGIN OPENSSH PRIVATE KEY-----\nthis is not base64!!\n"
        .. "-----END OPENSSH PRIVATE KEY-----"
      assert.matches("non%-base64", config.validate_key(garbled))
    end)

    it("13. rejects a header/footer label mismatch", function()
      local mismatched = "-----BEGIN OPENSSH PRIVATE KEY-----\nZm9vYmFy\n"
        .. "-----END RSA PRIVATE KEY-----"
      assert.equal("sshPrivateKey header/footer mismatch (BEGIN OPENSSH vs END RSA). The file "
        .. "is likely truncated or two keys are concatenated.", config.validate_key(mismatched))
      assert.equal("sshPrivateKey appears to be empty between its BEGIN and END markers.",
        config.validate_key("-----BEGIN RSA PRIVATE KEY-----\n\n-----END RSA PRIVATE KEY-----"))
      assert.matches("must be a PEM%-encoded private key", config.validate_key("hello"))
    end)

    it("14. validateConfig returns the sshPrivateKey error on save", function()
      h.run(function()
        h.env.EXE_API_KEY = "host-key"
        local r = assert(h.validate({ sshPrivateKey = PUBLIC }))
        assert.is_false(r.ok)
        assert.matches("sshPrivateKey looks like a PUBLIC key", r.errors[1])
      end)
    end)
  end)

  describe("manifest", function()
    local m = manifest.build(provider)
    local props = m.environmentDrivers[1].configSchema.properties

    it("36. defaults cpu to 4, memory to 4GB and disk to 20GB", function()
      assert.equal(4, props.cpu.default)
      assert.equal("4GB", props.memory.default)
      assert.equal("20GB", props.disk.default)
    end)

    it("37. titles sourceVm \"Source VM\" and says the token must allow cp", function()
      assert.equal("Source VM", props.sourceVm.title)
      assert.matches("token must allow `cp`.*403", props.sourceVm.description)
    end)

    it("38. gives no secret-ref field a default", function()
      local secrets = 0
      for _, p in pairs(props) do
        if p.format == "secret-ref" then
          secrets = secrets + 1
          assert.is_nil(p.default)
        end
      end
      assert.equal(2, secrets)
      assert.equal(8192, props.sshPrivateKey.maxLength)
    end)

    it("keeps upstream's ids, names, field order and UI groups", function()
      assert.equal("paperclip.exe-dev-sandbox-provider", m.id)
      assert.equal("exe.dev Sandbox Provider", m.displayName)
      assert.equal("Paperclip", m.author)
      assert.equal("exe-dev", m.environmentDrivers[1].driverKey)
      assert.equal("exe.dev VM", m.environmentDrivers[1].displayName)
      assert.same({ "apiKey", "sshPrivateKey", "sshUser", "sshIdentityFile", "sshPort",
        "strictHostKeyChecking", "image", "cpu", "memory", "disk", "sourceVm", "command", "env",
        "integrations", "tags", "setupScript", "prompt", "comment", "namePrefix", "apiUrl",
        "timeoutMs", "reuseLease" }, json.order_of(props))
      assert.is_nil(props.apiKey["x-paperclip-advanced"])
      assert.equal("SSH access", props.sshUser["x-paperclip-group"])
      assert.equal("VM resources", props.cpu["x-paperclip-group"])
      assert.equal("VM creation", props.sourceVm["x-paperclip-group"])
      assert.equal("API + runtime", props.timeoutMs["x-paperclip-group"])
    end)
  end)

  describe("acquireLease #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    it("15. creates a VM and prepares the workspace over one SSH connection", function()
      h.run(function()
        local before = ssh.stats().connects
        local cwd = h.dir .. "/workspace/custom"
        local lease = assert(h.acquire(h.config({ namePrefix = "paperclip", image = "ubuntu:22.04",
          timeoutMs = 300000 }), { requestedCwd = cwd }))
        local commands = h.fake:commands()
        assert.equal(1, #commands)
        assert.matches("^new %-%-json %-%-no%-email ", commands[1])
        assert.equal(1, ssh.stats().connects - before)
        assert.equal("paperclip-env1-run1", lease.providerLeaseId)
        local m = lease.metadata
        assert.equal("exe-dev", m.provider)
        assert.equal("paperclip-env1-run1", m.vmName)
        assert.equal("127.0.0.1", m.sshDest)
        assert.equal(cwd, m.remoteCwd)
        assert.equal("bash", m.shellCommand)
        assert.is_false(m.reuseLease)
        assert.is_false(m.resumedLease)
        assert.equal(300000, m.timeoutMs)
        assert.equal("https://paperclip-env1-run1.exe.xyz", m.httpsUrl)
        assert.equal("lax", m.region)
        assert.equal("Los Angeles", m.regionDisplay)
        assert.equal("directory", fs.stat(cwd).type)
        assert.equal("ubuntu:22.04", h.fake:vm("paperclip-env1-run1").image)
      end)
    end)

    it("defaults the workspace to $HOME/paperclip-workspace on the VM", function()
      h.run(function()
        local lease = assert(h.acquire())
        local vm = h.fake:vm(lease.providerLeaseId)
        assert.equal(vm.home .. "/paperclip-workspace", lease.metadata.remoteCwd)
        assert.equal("directory", fs.stat(vm.home .. "/paperclip-workspace").type)
      end)
    end)

    it("16. copies sourceVm with `cp`, passing only the sizes", function()
      h.run(function()
        h.fake:create_vm("golden-vm", { home_files = { ["toolchain.txt"] = "node 24\n" } })
        local s = h.session()
        local lease = assert(h.acquire(h.config({
          sourceVm = " golden-vm ",
          image = "ubuntu:22.04",
          env = { FOO = "bar" },
          cpu = 4,
          memory = "8GB",
          disk = "40GB",
        }), { environmentId = "env1", runId = "run1" }, s))
        assert.equal("cp 'golden-vm' 'paperclip-env1-run1' --json --cpu='4' --memory='8GB' "
          .. "--disk='40GB'", h.fake:commands()[1])
        assert.equal("paperclip-env1-run1", lease.providerLeaseId)
        local r = assert(s:call("environmentExecute", {
          config = h.config(),
          lease = lease,
          command = "sh",
          args = { "-c", 'cat "$HOME/toolchain.txt"' },
        }))
        assert.equal("node 24\n", r.stdout) -- the copy has the source's disk
      end)
    end)

    it("18. connects with a pasted sshPrivateKey kept in memory", function()
      h.run(function()
        local function key_dirs()
          local n = 0
          for _, name in ipairs(fs.list(os.getenv("TMPDIR") or "/tmp") or {}) do
            if name:find("^paperclip%-exe%-dev%-ssh%-") then
              n = n + 1
            end
          end
          return n
        end
        local dirs = key_dirs()
        local lease = assert(h.acquire())
        local vm = h.fake:vm(lease.providerLeaseId)
        assert.equal(1, vm.server:count("Accepted publickey"))
        assert.equal(dirs, key_dirs()) -- upstream wrote it to a temp file per call
      end)
    end)

    it("19. supplies the default Node >= 24.11 setup script", function()
      h.run(function()
        local lease = assert(h.acquire())
        local body = h.fake:commands()[1]
        assert.truthy(body:find("--setup-script=", 1, true))
        assert.truthy(body:find("process.versions.node", 1, true))
        assert.truthy(body:find("v[0]>24||(v[0]===24&&v[1]>=11)", 1, true))
        assert.truthy(body:find("nodesource.com/setup_24.x", 1, true))
        assert.truthy(body:find("sudo apt-get install -y nodejs", 1, true))
        -- the quoting survives exe.dev's shell lexer byte for byte
        assert.equal(require("providers.exe-dev.api").DEFAULT_SETUP_SCRIPT,
          h.fake:vm(lease.providerLeaseId).setup_script)
      end)
    end)

    it("20. passes an operator's setup script instead of the default", function()
      h.run(function()
        assert(h.acquire(h.config({ setupScript = "echo custom" })))
        local body = h.fake:commands()[1]
        assert.truthy(body:find("--setup-script='echo custom'", 1, true))
        assert.is_nil(body:find("nodesource.com", 1, true))
      end)
    end)

    it("21. leaves the built-in setup script visible in API errors", function()
      h.run(function()
        -- every `new` (a 5xx is reconciled: looked up, then sent once more)
        h.fake:fail({ command = "new", status = 500, body = "upstream boom", times = math.huge })
        local msg = h.failed(h.acquire())
        assert.matches("^exe.dev API command failed %(500%) for: new %-%-json", msg)
        assert.truthy(msg:find("nodesource.com/setup_24.x", 1, true))
        assert.is_nil(msg:find("[REDACTED]", 1, true))
        assert.truthy(msg:find("upstream boom", 1, true))
        assert.same({}, h.fake:running())
      end)
    end)

    it("22. explains exe.dev's SSH onboarding and deletes the VM", function()
      h.run(function()
        h.fake.vm_options.onboarding = true
        local msg = h.failed(h.acquire(h.config({ timeoutMs = 300000 })))
        assert.truthy(msg:find("Failed to inspect exe.dev VM paperclip-env1-run1: the "
          .. "Paperclip host SSH key is not registered with exe.dev.", 1, true))
        assert.truthy(msg:find("`ssh exe.dev`", 1, true))
        assert.equal("rm --json 'paperclip-env1-run1'", h.fake:commands()[2])
        assert.same({}, h.fake:running())
      end)
    end)

    it("23. explains a key that is not an OpenSSH private key and deletes the VM", function()
      h.run(function()
        local ok, err =
          h.acquire(h.config({ sshPrivateKey = "not-actually-a-key", timeoutMs = 300000 }))
        assert.is_nil(ok)
        assert.truthy(err.message:find("the configured SSH private key isn't an OpenSSH-format "
          .. "private key", 1, true))
        assert.equal("rm --json 'paperclip-env1-run1'", h.fake:commands()[2])
        assert.same({}, h.fake:running())
      end)
    end)

    it("24. redacts env values, the prompt and a custom setup script from API errors", function()
      h.run(function()
        h.fake:fail({ command = "new", status = 500, body = "upstream boom", times = math.huge })
        local msg = h.failed(h.acquire(h.config({
          env = { SECRET = "super-secret" },
          prompt = "build me a secret app",
          setupScript = "export TOKEN=super-secret",
        })))
        assert.truthy(msg:find("(500)", 1, true))
        assert.truthy(msg:find("upstream boom", 1, true))
        assert.truthy(msg:find("--env='SECRET=[REDACTED]'", 1, true))
        assert.truthy(msg:find("--prompt='[REDACTED]'", 1, true))
        assert.truthy(msg:find("--setup-script='[REDACTED]'", 1, true))
        assert.is_nil(msg:find("super-secret", 1, true))
        assert.is_nil(msg:find("build me a secret app", 1, true))
        -- the real values did reach exe.dev
        assert.truthy(h.fake:commands()[1]:find("--env='SECRET=super-secret'", 1, true))
      end)
    end)

    it("names a VM for a numeric runId so that it does not end in -<digits>", function()
      h.run(function()
        local lease = assert(h.acquire(nil, { runId = "12345" }))
        assert.equal("paperclip-env1-r12345", lease.providerLeaseId)
        assert.is_nil(lease.providerLeaseId:find("%-%d+$"))
        for _ = 1, 20 do
          local name = require("providers.exe-dev.api").vm_name({ namePrefix = "paperclip" }, {},
            true)
          assert.matches("^paperclip%-probe%-", name)
          assert.is_nil(name:find("%-%d+$"))
        end
      end)
    end)

    it("detects an error inside a 200 answer instead of asking for VM metadata", function()
      h.run(function()
        h.fake:fail({ command = "new", error = "quota exceeded: 5 VMs" })
        local msg = h.failed(h.acquire())
        assert.matches("^exe.dev API command failed for: new ", msg)
        assert.truthy(msg:find(": quota exceeded: 5 VMs", 1, true))
        assert.is_nil(msg:find("did not return VM metadata", 1, true))
        assert.equal(1, #h.fake:commands()) -- no `ls`, no `rm`
      end)
    end)

    it("falls back to `ls` when `new` answers without a VM record", function()
      h.run(function()
        h.fake:create_vm("paperclip-env1-run1")
        h.fake:fail({ command = "new", status = 200, body = "" })
        local lease = assert(h.acquire())
        assert.equal("paperclip-env1-run1", lease.providerLeaseId)
        assert.equal("ls --json 'paperclip-env1-run1'", h.fake:commands()[2])
        h.fake:fail({ command = "new", status = 200, body = "created" })
        local msg = h.failed(h.acquire(nil, { runId = "run-2" }))
        assert.equal("exe.dev did not return VM metadata for paperclip-env1-run2.", msg)
      end)
    end)

    it("uses EXE_API_KEY when the config has no apiKey", function()
      h.run(function()
        h.env.EXE_API_KEY = "  " .. h.fake.token .. "  "
        local cfg = h.config()
        cfg.apiKey = nil
        assert(h.acquire(cfg))
        assert.equal("Bearer " .. h.fake.token, h.fake.requests[1].headers.authorization)
        assert.equal("text/plain; charset=utf-8", h.fake.requests[1].headers["content-type"])
        h.env.EXE_API_KEY = nil
        local msg = h.failed(h.acquire(cfg))
        assert.equal("exe.dev environments require an API key in config or EXE_API_KEY.", msg)
      end)
    end)

    it("reads sshIdentityFile when no key is pasted, else what ssh would offer", function()
      h.run(function()
        local cfg = h.config({ sshIdentityFile = h.fake.key.path })
        cfg.sshPrivateKey = nil
        assert(h.acquire(cfg))
        -- neither: no agent here and nothing in ~/.ssh (h.dir is the account's home)
        cfg.sshIdentityFile = nil
        local msg = h.failed(h.acquire(cfg, { runId = "run-2" }))
        assert.matches("^exe%.dev: no SSH identity to reach the VM", msg)
        local ssh_dir = h.dir .. "/.ssh"
        for _, name in ipairs({ "id_rsa", "id_ecdsa", "id_ed25519" }) do
          assert.truthy(msg:find(ssh_dir .. "/" .. name .. ": missing", 1, true))
        end
        assert.equal(1, h.fake:count("new")) -- no VM was made that nobody could reach
        -- the VMs' key as ~/.ssh/id_ed25519 (0600), as `ssh` would find it
        assert(fs.mkdir(ssh_dir, tonumber("700", 8)))
        assert(fs.write(ssh_dir .. "/id_ed25519", h.fake.key.private, tonumber("600", 8)))
        local lease = assert(h.acquire(cfg, { runId = "run-3" }))
        local r = assert(h.session():call("environmentExecute", { config = cfg,
          lease = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata },
          command = "echo", args = { "by default key" } }))
        assert.equal("by default key\n", r.stdout)
        -- a key others could read is ignored, as ssh ignores it
        assert(fs.chmod(ssh_dir .. "/id_ed25519", tonumber("644", 8)))
        msg = h.failed(h.acquire(cfg, { runId = "run-4" }))
        assert.truthy(msg:find("id_ed25519: permissions 0644 are too open", 1, true))
      end)
    end)

    it("declares sh as the shell when the VM has no bash", function()
      h.run(function()
        local bin = h.dir .. "/bin"
        assert(fs.mkdir(bin))
        for _, tool in ipairs({ "sh", "mkdir", "cat" }) do
          assert(require("host.proc").run({ argv = { "ln", "-s",
            (tool == "sh" and "/bin/dash" or "/bin/" .. tool), bin .. "/" .. tool } }))
        end
        h.fake.vm_options.config = { "ForceCommand PATH=" .. bin
          .. ' exec /bin/dash -c "$SSH_ORIGINAL_COMMAND"' }
        local lease = assert(h.acquire(nil, { requestedCwd = h.dir .. "/ws" }))
        assert.equal("sh", lease.metadata.shellCommand)
      end)
    end)
  end)

  describe("resumeLease #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    it("25. answers expired when the retained VM no longer exists", function()
      h.run(function()
        local r = assert(h.session():call("environmentResumeLease", {
          config = h.config(),
          providerLeaseId = "missing-vm",
          leaseMetadata = { sshDest = "missing-vm.exe.xyz" },
        }))
        assert.same({ providerLeaseId = null, metadata = { expired = true } }, r)
        assert.same({ "ls --json 'missing-vm'" }, h.fake:commands())
      end)
    end)

    it("resumes a retained VM with its remoteCwd", function()
      h.run(function()
        local s = h.session()
        local cfg = h.config({ reuseLease = true })
        local lease = assert(h.acquire(cfg, nil, s))
        assert.equal(json.null, s:call("environmentReleaseLease",
          { config = cfg, providerLeaseId = lease.providerLeaseId }))
        local r = assert(s:call("environmentResumeLease", {
          config = cfg,
          providerLeaseId = lease.providerLeaseId,
          leaseMetadata = lease.metadata,
        }))
        assert.equal(lease.providerLeaseId, r.providerLeaseId)
        assert.equal(lease.metadata.remoteCwd, r.metadata.remoteCwd)
        assert.is_true(r.metadata.resumedLease)
        assert.is_true(r.metadata.reuseLease)
      end)
    end)
  end)

  describe("execute #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    it("26. runs with cwd, env and stdin, over the login shell's minimal env", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1", { home_files = {
          [".profile"] = "export PROFILE_MARKER=profile\n",
          [".bashrc"] = "export BASHRC_MARKER=bashrc\n",
        } })
        assert(fs.mkdir(vm.home .. "/.nvm"))
        assert(fs.write(vm.home .. "/.nvm/nvm.sh", "export NVM_MARKER=nvm\n"))
        local cwd = vm.home .. "/workspace"
        assert(fs.mkdir(cwd))
        local before = ssh.stats().connects
        local r = assert(h.execute(vm, {
          config = h.config({ timeoutMs = 300000 }),
          command = "sh",
          args = { "-c", 'pwd; printf "%s|%s|%s|%s\\n" "$FOO" "$PROFILE_MARKER$BASHRC_MARKER" '
            .. '"$NVM_MARKER$NVM_DIR" "$HOME"; cat; echo; echo eof' },
          cwd = cwd,
          env = { FOO = "bar baz" },
          stdin = "input-body",
          timeoutMs = 10000,
        }))
        assert.equal(cwd .. "\nbar baz|||" .. vm.home .. "\ninput-body\neof\n", r.stdout)
        assert.same({ exitCode = 0, signal = null, timedOut = false, stdout = r.stdout,
          stderr = "", metadata = { provider = "exe-dev", vmName = "vm-1",
            sshDest = "127.0.0.1" } }, r)
        assert.equal(1, ssh.stats().connects - before)
      end)
    end)

    it("27. answers a result with onboarding guidance when exe.dev wants registration", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1", { onboarding = true })
        local r = assert(h.execute(vm, {
          config = h.config({ timeoutMs = 300000 }),
          command = "node",
          args = { "-v" },
        }))
        assert.equal(1, r.exitCode)
        assert.truthy(r.stderr:find("the Paperclip host SSH key is not registered with exe.dev",
          1, true))
        assert.truthy(r.stderr:find("ssh exe.dev", 1, true))
      end)
    end)

    it("keeps an ordinary failing command's stderr as it is (no upstream prefix)", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local r = assert(h.execute(vm, {
          command = "sh",
          args = { "-c", "echo out; echo oops >&2; exit 3" },
        }))
        assert.equal(3, r.exitCode)
        assert.equal("out\n", r.stdout)
        assert.equal("oops\n", r.stderr)
        r = assert(h.execute(vm, { command = "no-such-command-here" }))
        assert.equal(127, r.exitCode)
      end)
    end)

    it("answers exit 1 without a lease id, as upstream", function()
      h.run(function()
        local r = assert(h.session():call("environmentExecute", {
          config = h.config(),
          lease = { providerLeaseId = null },
          command = "true",
        }))
        assert.same({ exitCode = 1, signal = null, timedOut = false, stdout = "",
          stderr = "No provider lease ID available for execution." }, r)
      end)
    end)

    it("refuses a bad env key with upstream's message", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local msg = h.failed(h.execute(vm, {
          command = "true",
          env = { ["BAD-KEY"] = "x" },
        }))
        assert.equal("Invalid exe.dev environment variable key: BAD-KEY", msg)
      end)
    end)

    it("times out: exitCode null, partial output, and the remote process group killed", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local pidfile = vm.home .. "/pids"
        local t0 = task.now()
        local r = assert(h.execute(vm, {
          command = "sh",
          args = { "-c", "sleep 60 & echo $! > " .. pidfile .. "; echo $$ >> " .. pidfile
            .. "; echo started; while :; do sleep 1; done" },
          timeoutMs = 700,
        }))
        assert.is_true(task.now() - t0 < 30, "the timeout, not the command (it never ends)")
        assert.is_true(r.timedOut)
        assert.equal(null, r.exitCode)
        assert.equal("started\n", r.stdout)
        assert.equal("Command timed out after 700ms\n", r.stderr)
        for pid in assert(fs.read(pidfile)):gmatch("%d+") do -- silent ones too, child included
          h.eventually(function()
            return not helpers.alive(pid)
          end, "process " .. pid .. " stopped")
        end
      end)
    end)

    it("streams output live as execute.log, an exact prefix of the result", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        -- the command goes on past "one" only once the spec has received it
        local gate <close>, log, on_log = helpers.log_gate()
        local r = assert(h.execute(vm, {
          command = "sh",
          args = { "-c", "echo one; " .. gate.sh .. "; echo two >&2; echo three" },
        }, h.session({ on_log = on_log })))
        assert.same({ "stdout", "one\n" }, log[1])
        assert.equal("one\nthree\n", r.stdout)
        assert.equal("two\n", r.stderr)
        assert.equal(r.stdout, helpers.logged(log, "stdout"))
      end)
    end)

    it("drains 8 MiB of stdout and 1 MiB of stderr in full", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local r = assert(h.execute(vm, {
          command = "sh",
          args = { "-c", "head -c 8388608 /dev/zero | tr '\\0' a & "
            .. "head -c 1048576 /dev/zero | tr '\\0' b >&2; wait; exit 5" },
        }))
        assert.equal(5, r.exitCode)
        assert.equal(8388608, #r.stdout)
        assert.equal(1048576, #r.stderr)
      end)
    end)

    it("returns once the command exits, while a child still holds stdout", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local r = assert(h.execute(vm, {
          command = "sh",
          args = { "-c", "sleep 30 & echo $! > " .. vm.home .. "/bg; echo done" },
        }))
        assert.same({ 0, "done\n", "" }, { r.exitCode, r.stdout, r.stderr })
        local pid = assert(tonumber(assert(fs.read(vm.home .. "/bg")):match("%d+")))
        -- the result came while the child still ran: it did not wait for stdout to close
        assert.is_true(helpers.alive(pid), "the result waited for the child to exit")
        require("host.core.sys").kill(pid, "SIGKILL") -- it outlives the command, as it may
      end)
    end)

    it("runs 20 concurrent commands on one pooled session", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local s = h.session()
        local before = ssh.stats().connects
        local fns = {}
        for i = 1, 20 do
          fns[i] = function()
            return h.execute(vm, { command = "sh", args = { "-c", "echo " .. i },
              stdin = tostring(i) }, s)
          end
        end
        for i, res in ipairs(task.all(fns)) do
          assert.equal(i .. "\n", assert(res[1]).stdout)
        end
        assert.equal(1, ssh.stats().connects - before)
      end)
    end)
  end)

  describe("cancelExecution #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    local function start(s, vm, id, marker)
      return task.spawn(function()
        return h.execute(vm, {
          executionId = id,
          command = "sh",
          args = { "-c", "echo $$ > " .. marker .. "; echo go; sleep 60" },
        }, s)
      end)
    end

    it("stops exactly that command's process group", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local s = h.session()
        local a = start(s, vm, "exec-a", vm.home .. "/a")
        local b = start(s, vm, "exec-b", vm.home .. "/b")
        local pid_b = h.eventually(function()
          return fs.stat(vm.home .. "/a") and (fs.read(vm.home .. "/b") or ""):match("%d+")
        end, "both commands started")
        local r = assert(s:call("environmentCancelExecution", { config = h.config(),
          lease = h.lease(vm), executionId = "exec-a", reason = "user" }))
        assert.same({ executionId = "exec-a", cancelled = true }, r)
        -- ended by the cancel (143: SIGTERM), half way through the command's own 60 s at most
        local res = assert(a:wait(30))
        assert.equal(143, res.exitCode)
        assert.is_false(res.timedOut)
        assert.is_true(helpers.alive(pid_b)) -- the other one runs on
        assert.is_false(b:done())
        assert(s:call("environmentCancelExecution", { config = h.config(),
          lease = h.lease(vm), executionId = "exec-b" }))
        assert.equal(143, assert(b:wait(10)).exitCode)
      end)
    end)

    it("cancels an execution this worker does not track (after a restart)", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local t = start(h.session(), vm, "exec-c", vm.home .. "/c")
        h.eventually(function()
          return fs.stat(vm.home .. "/c") ~= nil
        end, "the command started")
        local r = assert(h.session():call("environmentCancelExecution", { config = h.config(),
          lease = h.lease(vm), executionId = "exec-c" })) -- a new worker: nothing tracked
        assert.same({ executionId = "exec-c", cancelled = true }, r)
        assert.equal(143, assert(t:wait(10)).exitCode)
      end)
    end)

    it("answers cancelled = false without a lease", function()
      h.run(function()
        local r = assert(h.session():call("environmentCancelExecution", { config = h.config(),
          lease = { providerLeaseId = null }, executionId = "x" }))
        assert.same({ executionId = "x", cancelled = false }, r)
      end)
    end)
  end)

  describe("probe #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    it("28. creates a VM, verifies SSH and deletes the VM", function()
      h.run(function()
        local r = assert(h.session():call("environmentProbe", { config = h.config() }))
        assert.is_true(r.ok)
        local name = r.metadata.vmName
        assert.matches("^paperclip%-probe%-%w+$", name)
        assert.equal(("Connected to exe.dev VM %s."):format(name), r.summary)
        assert.equal("exe-dev", r.metadata.provider)
        assert.equal("127.0.0.1", r.metadata.sshDest)
        assert.equal("bash", r.metadata.shellCommand)
        assert.equal(("rm --json '%s'"):format(name), h.fake:commands()[2])
        assert.same({}, h.fake:running())
      end)
    end)

    it("29. reports an SSH failure and still deletes the VM", function()
      h.run(function()
        h.fake.vm_options.config = { "ForceCommand echo 'permission denied' >&2; exit 1" }
        local r = assert(h.session():call("environmentProbe", { config = h.config() }))
        assert.is_false(r.ok)
        assert.equal("exe.dev environment probe failed.", r.summary)
        assert.equal("exe-dev", r.metadata.provider)
        assert.truthy(r.metadata.error:find("permission denied", 1, true))
        assert.matches("^rm %-%-json 'paperclip%-probe%-", h.fake:commands()[2])
        assert.same({}, h.fake:running())
      end)
    end)

    it("30. reports onboarding guidance and still deletes the VM", function()
      h.run(function()
        h.fake.vm_options.onboarding = true
        local r = assert(h.session():call("environmentProbe", { config = h.config() }))
        assert.is_false(r.ok)
        assert.equal("exe.dev environment probe failed.", r.summary)
        assert.truthy(r.metadata.error:find(
          "the Paperclip host SSH key is not registered with exe.dev", 1, true))
        assert.matches("^rm %-%-json 'paperclip%-probe%-", h.fake:commands()[2])
        assert.same({}, h.fake:running())
      end)
    end)
  end)

  describe("release, destroy and realize #ssh", function()
    local h = fake_exedev.harness({ ssh = true })

    it("31. deletes a non-reusable lease's VM on release", function()
      h.run(function()
        h.fake:create_vm("vm-1")
        assert.equal(null, h.session():call("environmentReleaseLease", {
          config = h.config({ reuseLease = false }), providerLeaseId = "vm-1",
          leaseMetadata = {} }))
        assert.same({ "rm --json 'vm-1'" }, h.fake:commands())
        assert.is_nil(h.fake:vm("vm-1"))
      end)
    end)

    it("keeps a reusable lease's VM on release: no API call", function()
      h.run(function()
        h.fake:create_vm("vm-1")
        assert.equal(null, h.session():call("environmentReleaseLease", {
          config = h.config({ reuseLease = true }), providerLeaseId = "vm-1" }))
        assert.same({}, h.fake:commands())
        assert.truthy(h.fake:vm("vm-1"))
      end)
    end)

    it("32. deletes the VM on destroy", function()
      h.run(function()
        h.fake:create_vm("vm-2")
        assert.equal(null, h.session():call("environmentDestroyLease", {
          config = h.config(), providerLeaseId = "vm-2", leaseMetadata = {} }))
        assert.same({ "rm --json 'vm-2'" }, h.fake:commands())
        assert.is_nil(h.fake:vm("vm-2"))
      end)
    end)

    it("33. realizes the workspace by mkdir -p of the lease's remoteCwd over SSH", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local cwd = h.dir .. "/srv/paperclip/run-1"
        local before = ssh.stats().connects
        local r = assert(h.session():call("environmentRealizeWorkspace", {
          config = h.config({ timeoutMs = 300000 }),
          lease = h.lease(vm, { remoteCwd = cwd }),
          workspace = { localPath = "/local/paperclip" },
        }))
        assert.same({ cwd = cwd, metadata = { provider = "exe-dev", remoteCwd = cwd } }, r)
        assert.equal("directory", fs.stat(cwd).type)
        assert.equal(1, ssh.stats().connects - before)
      end)
    end)

    it("34. falls back to workspace.remotePath before workspace.localPath", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local remote_path = h.dir .. "/srv/paperclip/remote-fallback"
        local r = assert(h.session():call("environmentRealizeWorkspace", {
          config = h.config(),
          lease = h.lease(vm),
          workspace = { localPath = "/local/paperclip", remotePath = remote_path },
        }))
        assert.equal(remote_path, r.cwd)
        assert.equal("directory", fs.stat(remote_path).type)
      end)
    end)

    it("35. skips SSH without a lease id and answers the metadata's cwd", function()
      h.run(function()
        local before = ssh.stats().connects
        local r = assert(h.session():call("environmentRealizeWorkspace", {
          config = h.config(),
          lease = { providerLeaseId = null, metadata = { remoteCwd = "/srv/paperclip/no-vm" } },
          workspace = { localPath = "/local/paperclip" },
        }))
        assert.equal("/srv/paperclip/no-vm", r.cwd)
        assert.equal(before, ssh.stats().connects)
      end)
    end)
  end)
end)
