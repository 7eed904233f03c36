// bench/delay_proxy.mjs: a TCP proxy on 127.0.0.1 that adds a fixed delay to every chunk in
// each direction, so that loopback behaves like a network with a round trip of twice that delay
// (the bridge bench's --net-delay: 20 ms each way, a 40 ms round trip). Order is kept (chunks
// leave in the order they came, each `delay` ms after it came); there is no bandwidth limit.
//
//   node bench/delay_proxy.mjs --target=PORT [--host=127.0.0.1] [--delay-ms=20]
//
// Prints "listening PORT" once it listens. It exits when its stdin ends (the bench keeps a pipe
// open: when the bench goes, so does the proxy), or on SIGTERM/SIGINT.
import net from "node:net";

const opts = { host: "127.0.0.1", delay: 20 };
for (const a of process.argv.slice(2)) {
  const m = /^--([a-z-]+)=(.*)$/.exec(a);
  if (m && m[1] === "target") opts.port = Number(m[2]);
  else if (m && m[1] === "host") opts.host = m[2];
  else if (m && m[1] === "delay-ms") opts.delay = Number(m[2]);
  else {
    process.stderr.write(`delay_proxy: unknown argument ${a}\n`);
    process.exit(2);
  }
}
if (!(opts.port > 0) || !(opts.delay >= 0)) {
  process.stderr.write("delay_proxy: --target=PORT is required; --delay-ms must be >= 0\n");
  process.exit(2);
}

const sockets = new Set();

// Every byte read from `from` is written to `to` opts.delay ms later; EOF and errors too.
function pipe(from, to) {
  from.on("data", (chunk) => {
    setTimeout(() => {
      if (!to.destroyed) to.write(chunk);
    }, opts.delay);
  });
  from.on("end", () => setTimeout(() => to.end(), opts.delay));
  from.on("error", () => setTimeout(() => to.destroy(), opts.delay));
  from.on("close", () => setTimeout(() => to.destroy(), opts.delay + 1));
}

const server = net.createServer((client) => {
  const upstream = net.connect(opts.port, opts.host);
  for (const s of [client, upstream]) {
    s.setNoDelay(true);
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  }
  pipe(client, upstream);
  pipe(upstream, client);
});

function quit() {
  server.close();
  for (const s of sockets) s.destroy();
  process.exit(0);
}

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.stdin.on("end", quit);
process.stdin.on("error", quit);
process.stdin.resume();
process.on("SIGTERM", quit);
process.on("SIGINT", quit);
