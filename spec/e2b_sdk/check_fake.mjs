// spec/e2b_sdk/check_fake.mjs: the fake E2B (spec/support/fake_e2b.lua) against the REAL `e2b`
// JS SDK from npm (pinned in package.json). Starts the fake with
//   <provider-host> spec/support/fake_e2b_main.lua
// drives every call the E2B provider relies on through the unmodified SDK, and prints one JSON
// line: {ok, sdkVersion, node, passed, failed, checks: [{name, ok, ms, error?}]}. Progress goes
// to stderr. Exits 0 when every check passed, 1 on any mismatch, 2 when it cannot run at all.
//
//   npm ci --prefix spec/e2b_sdk && node spec/e2b_sdk/check_fake.mjs build/provider-host
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '..', '..')
const CHECK_TIMEOUT_MS = 30000 // one check
const TOTAL_TIMEOUT_MS = 240000 // the whole run

function die(message) {
  console.log(JSON.stringify({ ok: false, error: message }))
  process.exit(2)
}

const binary = process.argv[2]
if (!binary) die('usage: node spec/e2b_sdk/check_fake.mjs <provider-host binary>')

let e2b
try {
  e2b = await import('e2b')
} catch (err) {
  die(`cannot load the e2b SDK (${err.message}): run \`npm ci --prefix spec/e2b_sdk\``)
}
const {
  Sandbox, CommandExitError, TimeoutError, SandboxNotFoundError, NotFoundError,
  AuthenticationError, RateLimitError, InvalidArgumentError, SandboxError,
} = e2b
const sdkVersion = JSON.parse(
  readFileSync(path.join(here, 'node_modules', 'e2b', 'package.json'), 'utf8')).version

// The fake, as a child speaking NDJSON: its first line is {apiUrl, sandboxUrl, domain, apiKey};
// then one reply line per control request.
function startFake() {
  const child = spawn(path.resolve(binary), [path.join(repo, 'spec/support/fake_e2b_main.lua')], {
    cwd: repo,
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout })
  const pending = new Map()
  let nextId = 1
  let resolveInfo, rejectInfo
  const info = new Promise((resolve, reject) => { resolveInfo = resolve; rejectInfo = reject })
  let first = true
  lines.on('line', (line) => {
    let msg
    try { msg = JSON.parse(line) } catch { return }
    if (first) { first = false; resolveInfo(msg); return }
    const p = pending.get(msg.id)
    if (!p) return
    pending.delete(msg.id)
    if (msg.ok) p.resolve(msg.result)
    else p.reject(new Error(`control: ${msg.error}`))
  })
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    rejectInfo(new Error(`the fake exited (${code ?? signal}) before it was ready`))
    for (const p of pending.values()) p.reject(new Error('the fake exited'))
    resolve({ code, signal })
  }))
  child.on('error', (err) => rejectInfo(err))
  return {
    child,
    info,
    exited,
    control(op, fields = {}) {
      const id = nextId++
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject })
        child.stdin.write(JSON.stringify({ id, op, ...fields }) + '\n')
      })
    },
    async stop() {
      child.stdin.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), 10000)
      const res = await exited
      clearTimeout(timer)
      return res
    },
  }
}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    }),
  ])
}

function assert(cond, message) {
  if (!cond) throw new Error(message)
}

// JSON with object keys sorted, so that key order never matters.
function canonical(v) {
  return JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x))
    ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]])) : x)
}

function eq(actual, expected, what) {
  const a = canonical(actual), e = canonical(expected)
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`)
}

// The error `promise` rejects with, checked to be an instance of `cls` (and to match `re`).
async function rejects(promise, cls, re, what) {
  let err
  try {
    const value = await promise
    throw new Error(`${what}: expected ${cls.name}, but it resolved with ${JSON.stringify(value)}`)
  } catch (e) {
    if (e.message?.startsWith(`${what}: expected`)) throw e
    err = e
  }
  if (!(err instanceof cls)) {
    throw new Error(`${what}: expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`)
  }
  if (re && !re.test(err.message)) {
    throw new Error(`${what}: ${cls.name} message ${JSON.stringify(err.message)} !~ ${re}`)
  }
  return err
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function until(fn, ms, what) {
  const end = Date.now() + ms
  for (;;) {
    if (await fn()) return
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await sleep(50)
  }
}

const checks = []
async function check(name, fn) {
  const t0 = Date.now()
  try {
    await withTimeout(Promise.resolve().then(fn), CHECK_TIMEOUT_MS, name)
    checks.push({ name, ok: true, ms: Date.now() - t0 })
    process.stderr.write(`ok   ${name}\n`)
  } catch (err) {
    checks.push({ name, ok: false, ms: Date.now() - t0, error: String(err?.stack ?? err) })
    process.stderr.write(`FAIL ${name}: ${err?.message ?? err}\n`)
  }
}

async function main() {
  const fake = startFake()
  const info = await withTimeout(fake.info, 15000, 'starting the fake')
  const conn = {
    apiKey: info.apiKey, apiUrl: info.apiUrl, sandboxUrl: info.sandboxUrl, domain: info.domain,
    requestTimeoutMs: 15000,
  }
  const ctl = fake.control
  let sbx, id, home

  try {
    await check('create: POST /v2/sandboxes, 201, metadata and lifetime', async () => {
      sbx = await Sandbox.create('base', { ...conn, timeoutMs: 120000,
        metadata: { owner: 'lua', run: '7' } })
      id = sbx.sandboxId
      assert(/^[a-z0-9]{20}$/.test(id), `sandbox id ${id}`)
      eq(sbx.sandboxDomain, info.domain, 'sandboxDomain')
      const st = await ctl('sandbox', { sandboxId: id })
      eq(st.state, 'running', 'state')
      eq(st.timeoutMs, 120000, 'timeoutMs')
      eq(st.metadata, { owner: 'lua', run: '7' }, 'metadata')
      home = st.home
      eq(await ctl('count', { pattern: '^/v2/sandboxes$', method: 'POST' }), 1, 'create requests')
    })

    await check('commands.run: exit 0, stdout and stderr', async () => {
      const r = await sbx.commands.run('echo hello; echo oops >&2')
      eq(r.exitCode, 0, 'exitCode')
      eq(r.stdout, 'hello\n', 'stdout')
      eq(r.stderr, 'oops\n', 'stderr')
      const cmds = await ctl('commands')
      const last = cmds[cmds.length - 1]
      eq([last.cmd, last.args], ['/bin/bash', ['-l', '-c', 'echo hello; echo oops >&2']], 'argv')
      eq(last.timeoutMs, 60000, 'Connect-Timeout-Ms (default timeoutMs)')
    })

    await check('commands.run: cwd, envs, HOME, E2B_SANDBOX_ID', async () => {
      const r = await sbx.commands.run('pwd; echo "$FOO|$HOME|$E2B_SANDBOX_ID|$E2B_SANDBOX"', {
        cwd: '/home/user', envs: { FOO: 'bar' } })
      const [pwd, vars] = r.stdout.split('\n')
      eq(pwd, home, 'pwd (/home/user maps to the sandbox home)')
      eq(vars, `bar|${home}|${id}|true`, 'env')
    })

    await check('commands.run: a missing cwd is InvalidArgumentError', async () => {
      await rejects(sbx.commands.run('true', { cwd: '/nonexistent-dir' }), InvalidArgumentError,
        /cwd '\/nonexistent-dir' does not exist/, 'missing cwd')
    })

    await check('commands.run: exit 3 is CommandExitError with the output', async () => {
      const err = await rejects(sbx.commands.run('echo out; echo err >&2; exit 3'),
        CommandExitError, /^exit status 3$/, 'exit 3')
      eq([err.exitCode, err.stdout, err.stderr, err.error],
        [3, 'out\n', 'err\n', 'exit status 3'], 'result')
    })

    await check('commands.run: timeoutMs ends in TimeoutError, partial output kept, process killed',
      async () => {
        const t0 = Date.now()
        const h = await sbx.commands.run('echo partial; sleep 30', { background: true,
          timeoutMs: 1000 })
        await rejects(h.wait(), TimeoutError, /deadline_exceeded/, 'timeout')
        const took = Date.now() - t0
        assert(took >= 900 && took < 5000, `timed out after ${took} ms`)
        eq(h.stdout, 'partial\n', 'partial stdout')
        await until(async () => !(await ctl('sandbox', { sandboxId: id })).processes
          .includes(h.pid), 5000, 'the timed-out process is reaped')
        const c = (await ctl('commands')).find((x) => x.pid === h.pid)
        eq([c.signal, c.deadlineExceeded], ['SIGKILL', true], 'killed at the deadline')
        await rejects(sbx.commands.run('sleep 30', { timeoutMs: 500 }), TimeoutError, null,
          'foreground timeout')
      })

    await check('stdin: background + sendStdin + closeStdin + wait', async () => {
      const h = await sbx.commands.run('cat; echo done', { background: true, stdin: true })
      assert(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`)
      await sbx.commands.sendStdin(h.pid, 'line1\n')
      await sbx.commands.sendStdin(h.pid, new TextEncoder().encode('line2\n'))
      await sbx.commands.closeStdin(h.pid)
      const r = await h.wait()
      eq([r.exitCode, r.stdout], [0, 'line1\nline2\ndone\n'], 'result')
      await rejects(sbx.commands.sendStdin(h.pid, 'late'), NotFoundError,
        /process with pid \d+ not found/, 'stdin after exit')
    })

    // A duplex: output must stream back while stdin stays open, each echo before the next write.
    await check('stdin duplex: echoes stream back before stdin closes (handle methods)',
      async () => {
        const seen = []
        const h = await sbx.commands.run('cat', { background: true, stdin: true, timeoutMs: 0,
          onStdout: (d) => seen.push(d) })
        let expect = ''
        for (const word of ['ping1\n', 'ping2\n', 'ping3\n']) {
          await h.sendStdin(word)
          expect += word
          await until(() => seen.join('') === expect, 5000, `the echo of ${word.trim()}`)
        }
        await h.closeStdin()
        const r = await h.wait()
        eq([r.exitCode, r.stdout], [0, 'ping1\nping2\nping3\n'], 'result')
        const c = (await ctl('commands')).find((x) => x.pid === h.pid)
        eq([c.stdin, c.timeoutMs ?? null], [true, null], 'stdin open, no deadline (timeoutMs 0)')
      })

    await check('stdin duplex: binary bytes arrive exact; closeStdin twice is fine', async () => {
      const seen = []
      const h = await sbx.commands.run('sha256sum; echo eof; sleep 30', { background: true,
        stdin: true, onStdout: (d) => seen.push(d) })
      const data = Buffer.alloc(256 + (1 << 20))
      for (let i = 0; i < data.length; i++) data[i] = i < 256 ? i : (i * 131 + (i >> 9)) & 255
      for (const [a, b] of [[0, 256], [256, 70000], [70000, data.length]]) {
        await sbx.commands.sendStdin(h.pid, new Uint8Array(data.subarray(a, b)))
      }
      await sbx.commands.closeStdin(h.pid)
      await until(() => seen.join('').endsWith('eof\n'), 5000, 'EOF reached the command')
      await sbx.commands.closeStdin(h.pid) // still running: closing again is no error
      const { createHash } = await import('node:crypto')
      eq(seen.join(''), `${createHash('sha256').update(data).digest('hex')}  -\neof\n`,
        'sha256 of stdin')
      eq(await h.kill(), true, 'kill')
    })

    await check('stdin duplex: kill ends a command waiting on stdin; its pid is gone', async () => {
      const seen = []
      const h = await sbx.commands.run('cat', { background: true, stdin: true,
        onStdout: (d) => seen.push(d) })
      await h.sendStdin('alive\n')
      await until(() => seen.join('') === 'alive\n', 5000, 'the echo')
      eq(await h.kill(), true, 'kill')
      const err = await rejects(h.wait(), CommandExitError, /^signal: killed$/, 'killed wait')
      eq([err.exitCode, err.stdout], [-1, 'alive\n'], 'result')
      await until(async () => !(await ctl('sandbox', { sandboxId: id })).processes
        .includes(h.pid), 5000, 'the killed process is reaped')
      await rejects(h.sendStdin('late'), NotFoundError, /process with pid \d+ not found/,
        'stdin after kill')
      eq(await h.kill(), false, 'kill again')
    })

    await check('stdin: sendStdin without stdin is SandboxError 13', async () => {
      const h = await sbx.commands.run('sleep 5', { background: true })
      await rejects(sbx.commands.sendStdin(h.pid, 'x'), SandboxError,
        /stdin not enabled or closed/, 'stdin disabled')
      eq(await h.kill(), true, 'kill')
    })

    await check('commands.list, commands.kill (true, then false)', async () => {
      const h = await sbx.commands.run('sleep 30', { background: true })
      const list = await sbx.commands.list()
      const entry = list.find((p) => p.pid === h.pid)
      assert(entry, `pid ${h.pid} not listed in ${JSON.stringify(list)}`)
      eq([entry.cmd, entry.args], ['/bin/bash', ['-l', '-c', 'sleep 30']], 'listed config')
      eq(await sbx.commands.kill(h.pid), true, 'kill')
      const err = await rejects(h.wait(), CommandExitError, /^signal: killed$/, 'killed wait')
      eq(err.exitCode, -1, 'exitCode')
      eq(await sbx.commands.kill(h.pid), false, 'kill again')
    })

    await check('commands.connect re-attaches to a running process', async () => {
      const h = await sbx.commands.run('sleep 0.5; echo later', { background: true })
      const h2 = await sbx.commands.connect(h.pid)
      const r = await h2.wait()
      eq(r.stdout, 'later\n', 'stdout seen by the second stream')
      await h.wait()
    })

    await check('files.write (multipart and octet-stream), read back by a command', async () => {
      const p = `/tmp/paperclip-stdin-${randomUUID()}`
      const entry = await sbx.files.write(p, 'staged input\n')
      eq([entry.path, entry.name, entry.type], [p, path.basename(p), 'file'], 'entry')
      eq((await sbx.commands.run(`cat < '${p}'`)).stdout, 'staged input\n', 'cat < file')
      eq(await sbx.files.read(p), 'staged input\n', 'files.read')
      await sbx.files.remove(p)
      eq((await sbx.commands.run(`test -e '${p}' && echo yes || echo no`)).stdout, 'no\n',
        'removed')
      const raw = await sbx.files.write(`${p}-raw`, 'raw bytes', { useOctetStream: true })
      eq(raw.path, `${p}-raw`, 'octet-stream entry')
      eq((await sbx.commands.run(`cat '${p}-raw'`)).stdout, 'raw bytes', 'octet-stream data')
      await sbx.files.remove(`${p}-raw`)
      const rel = await sbx.files.write('notes/hello.txt', 'hi')
      eq(rel.path, '/home/user/notes/hello.txt', 'relative path')
      eq((await sbx.commands.run('cat ~/notes/hello.txt')).stdout, 'hi', 'home file')
      await rejects(sbx.files.read('/home/user/nope.txt'), e2b.FileNotFoundError, null,
        'read a missing file')
    })

    await check('setTimeout: POST /sandboxes/{id}/timeout, 204; getInfo', async () => {
      await sbx.setTimeout(60000)
      eq((await ctl('sandbox', { sandboxId: id })).timeoutMs, 60000, 'timeoutMs')
      eq(await ctl('count', { pattern: `^/sandboxes/${id}/timeout$`, method: 'POST' }), 1,
        'timeout requests')
      const i = await Sandbox.getInfo(id, conn)
      eq([i.sandboxId, i.state, i.metadata], [id, 'running', { owner: 'lua', run: '7' }], 'info')
      const life = (i.endAt - i.startedAt) / 1000
      assert(life >= 55 && life <= 65, `endAt - startedAt = ${life} s`)
      eq(await sbx.isRunning(), true, 'isRunning')
    })

    await check('Sandbox.list shows running sandboxes', async () => {
      const items = await Sandbox.list(conn).nextItems()
      assert(items.some((s) => s.sandboxId === id && s.state === 'running'),
        `listed: ${JSON.stringify(items.map((s) => s.sandboxId))}`)
    })

    await check('pause: true, then false; a paused sandbox is not running', async () => {
      eq(await sbx.pause(), true, 'pause')
      eq(await sbx.pause(), false, 'pause again')
      eq((await ctl('sandbox', { sandboxId: id })).state, 'paused', 'state')
      eq(await sbx.isRunning(), false, 'isRunning')
      await rejects(sbx.commands.run('true'), SandboxNotFoundError, null, 'run while paused')
      await rejects(sbx.setTimeout(1000), SandboxNotFoundError, null, 'setTimeout while paused')
    })

    await check('connect: resumes a paused sandbox (201), extends a running one (200)',
      async () => {
        const s2 = await Sandbox.connect(id, conn)
        eq(s2.sandboxId, id, 'sandboxId')
        eq((await ctl('sandbox', { sandboxId: id })).state, 'running', 'state')
        eq((await s2.commands.run('echo back')).stdout, 'back\n', 'run after resume')
        await Sandbox.connect(id, { ...conn, timeoutMs: 1000 })
        const left = (await ctl('sandbox', { sandboxId: id })).expiresIn
        assert(left > 200, `connect shortened the lifetime to ${left} s`)
        const statuses = (await ctl('requests')).filter((r) => r.path ===
          `/v2/sandboxes/${id}/connect`).map((r) => r.status)
        eq(statuses, [201, 200], 'connect statuses')
        sbx = s2
      })

    await check('envd auth: a wrong access token is AuthenticationError', async () => {
      const s3 = await Sandbox.connect(id, conn)
      s3.envdAccessToken = 'wrong-token'
      await rejects(s3.commands.run('true'), AuthenticationError, /unauthenticated/, 'stream')
      await rejects(s3.commands.list(), AuthenticationError, /unauthorized access/, 'unary')
    })

    await check('kill: true, then false; the sandbox is gone', async () => {
      const h = await sbx.commands.run('sleep 30', { background: true })
      eq(await sbx.kill(), true, 'kill')
      eq(await sbx.kill(), false, 'kill again')
      const st = await ctl('sandbox', { sandboxId: id })
      eq([st.state, st.processes], ['killed', []], 'state')
      await rejects(h.wait(), TimeoutError, /killed or reached its end of life/,
        'a stream in flight is cut')
      await until(async () => (await ctl('commands')).find((c) => c.pid === h.pid).signal ===
        'SIGKILL', 5000, 'the command was killed with its sandbox')
    })

    await check('not found: every path on a killed and an unknown id', async () => {
      for (const sid of [id, 'nosuchsandbox0000000']) {
        await rejects(Sandbox.connect(sid, conn), SandboxNotFoundError,
          new RegExp(`Paused sandbox ${sid} not found`), `connect ${sid}`)
        eq(await Sandbox.kill(sid, conn), false, `kill ${sid}`)
        await rejects(Sandbox.setTimeout(sid, 1000, conn), SandboxNotFoundError,
          new RegExp(`Sandbox ${sid} not found`), `setTimeout ${sid}`)
        await rejects(Sandbox.pause(sid, conn), SandboxNotFoundError, null, `pause ${sid}`)
        await rejects(Sandbox.getInfo(sid, conn), SandboxNotFoundError, null, `getInfo ${sid}`)
      }
      await rejects(sbx.commands.run('true'), SandboxNotFoundError,
        /Sandbox is probably not running anymore/, 'run on a killed sandbox')
      await rejects(sbx.commands.sendStdin(1, 'x'), TimeoutError, /unavailable/,
        'sendStdin on a killed sandbox')
    })

    await check('auth: a wrong API key is AuthenticationError (401)', async () => {
      await rejects(Sandbox.create('base', { ...conn, apiKey: 'e2b_wrong_key' }),
        AuthenticationError, /Unauthorized/, 'create')
      await rejects(Sandbox.connect('nosuchsandbox0000000', { ...conn, apiKey: 'e2b_wrong' }),
        AuthenticationError, null, 'connect')
    })

    await check('429: RateLimitError; Retry-After is retried', async () => {
      const before = () => ctl('count', { pattern: '^/v2/sandboxes$', method: 'POST' })
      let n = await before()
      await ctl('fail', { spec: { method: 'POST', path: '^/v2/sandboxes$', status: 429 } })
      await rejects(Sandbox.create('base', conn), RateLimitError, /Rate limit exceeded/,
        'no Retry-After')
      eq(await before() - n, 1, 'attempts without Retry-After')
      n = await before()
      await ctl('fail', { spec: { method: 'POST', path: '^/v2/sandboxes$', status: 429,
        headers: { 'retry-after': '0' }, times: 4 } })
      await rejects(Sandbox.create('base', conn), RateLimitError, null, 'four 429s')
      eq(await before() - n, 4, 'attempts with Retry-After (1 + 3 retries)')
      n = await before()
      await ctl('fail', { spec: { method: 'POST', path: '^/v2/sandboxes$', status: 429,
        headers: { 'retry-after': '0' } } })
      const s = await Sandbox.create('base', conn)
      eq(await before() - n, 2, 'one 429, then created')
      await s.kill()
    })

    await check('expiry: a sandbox past its timeout is killed with its processes', async () => {
      const s = await Sandbox.create('base', { ...conn, timeoutMs: 1000 })
      const h = await s.commands.run('sleep 30', { background: true })
      await until(async () => (await ctl('sandbox', { sandboxId: s.sandboxId })).state ===
        'killed', 5000, 'expired')
      eq(await s.isRunning(), false, 'isRunning')
      await rejects(Sandbox.connect(s.sandboxId, conn), SandboxNotFoundError, null, 'connect')
      await until(async () => (await ctl('commands')).find((c) => c.pid === h.pid).signal ===
        'SIGKILL', 5000, 'the command was killed at expiry')
    })

    await check('expiry with lifecycle.onTimeout = pause: paused, then resumed', async () => {
      const s = await Sandbox.create('base', { ...conn, timeoutMs: 1000,
        lifecycle: { onTimeout: 'pause' } })
      await until(async () => (await ctl('sandbox', { sandboxId: s.sandboxId })).state ===
        'paused', 5000, 'auto-paused')
      const s2 = await Sandbox.connect(s.sandboxId, conn)
      eq((await s2.commands.run('echo up')).stdout, 'up\n', 'run after resume')
      eq(await s2.kill(), true, 'kill')
    })

    await check('faults: a dropped and a truncated process stream are errors', async () => {
      const s = await Sandbox.create('base', conn)
      await ctl('fail', { spec: { path: '^/process%.Process/Start$', truncate: true } })
      await rejects(s.commands.run('echo hi'), SandboxError, /missing EndStreamResponse/,
        'truncated')
      await ctl('fail', { spec: { path: '^/process%.Process/Start$', truncate: 'end' } })
      await rejects(s.commands.run('echo hi'), SandboxError, /Process exited without a result/,
        'no end event')
      await ctl('fail', { spec: { path: '^/process%.Process/Start$', drop: true } })
      const dropped = await rejects(s.commands.run('echo hi'), Error, null, 'dropped')
      process.stderr.write(`     a dropped stream gives ${dropped.constructor.name}: ${dropped.message}\n`)
      eq((await s.commands.run('echo fine')).stdout, 'fine\n', 'faults are consumed')
      await s.kill()
    })

    await check('no sandbox left running', async () => {
      eq(await ctl('running'), [], 'running sandboxes')
    })
  } finally {
    const res = await fake.stop()
    if (res.code !== 0) {
      checks.push({ name: 'the fake exits cleanly', ok: false, ms: 0,
        error: `exit ${res.code ?? res.signal}` })
    }
  }
}

const total = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, sdkVersion, error: 'the check took too long', checks }))
  process.exit(1)
}, TOTAL_TIMEOUT_MS)

try {
  await main()
} catch (err) {
  checks.push({ name: 'run', ok: false, ms: 0, error: String(err?.stack ?? err) })
}
clearTimeout(total)
const failed = checks.filter((c) => !c.ok).length
console.log(JSON.stringify({ ok: failed === 0, sdkVersion, node: process.version,
  passed: checks.length - failed, failed, checks }))
process.exit(failed === 0 ? 0 : 1)
