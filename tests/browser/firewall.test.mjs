// Halls behind closed firewalls (issue #7), in real headless Chromium against the real server binary.
//
// (a) TURN: a local coturn (Debian's `turnserver`, started here with the TURN REST API secret) and the server
//     configured with it. Two pages join with `?relay=1` (iceTransportPolicy "relay"): both must decode each
//     other's video, and the selected candidate pair of both their connections must be a relay one.
// (b) ICE-TCP: the server and Chromium run in a network namespace whose firewall drops every UDP packet; the
//     server offers its TCP port. Two pages must decode each other's video over TCP pairs.
// (c) Dual stack: the server's media port on `::` in a namespace with an IPv4 and an IPv6 address. With IPv4 UDP
//     dropped the pages connect over the IPv6 host candidate; with IPv6 UDP dropped over the IPv4 one (IPv4
//     peers of the `::` socket, seen as IPv4-mapped addresses by the kernel).
//
// Needs root (network namespaces, iptables) and coturn; a test whose tool is missing fails and says which.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bothDecode,
  CHROMIUM,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  launchBrowser,
  removeNetns,
  selectedPair,
  sleep,
  startServer,
  stopServer,
  waitFor,
  watchPage,
} from './harness.mjs';

const PEOPLE = [
  { name: 'UBND xã Đỏ', rgb: [230, 20, 20] },
  { name: 'UBND xã Xanh', rgb: [20, 20, 230] },
];

const tmp = mkdtempSync(join(tmpdir(), 'giaoban-firewall-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A free UDP port on 127.0.0.1 (bound and released). */
function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.on('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A free TCP port on 127.0.0.1 (bound and released). */
function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Start coturn on loopback with the TURN REST API secret; resolves once it listens. */
async function startCoturn(secret) {
  const port = await freeUdpPort();
  const dir = mkdtempSync(join(tmp, 'coturn-'));
  // Relay ports from a range derived from the listening port, so parallel runs rarely collide.
  const minPort = 20000 + (port % 20) * 1000;
  const args = [
    '-n',
    '--listening-ip=127.0.0.1',
    `--listening-port=${port}`,
    '--relay-ip=127.0.0.1',
    `--min-port=${minPort}`,
    `--max-port=${minPort + 999}`,
    '--use-auth-secret',
    `--static-auth-secret=${secret}`,
    '--realm=giaoban.test',
    '--no-tls',
    '--no-dtls',
    '--no-cli',
    '--allow-loopback-peers',
    '--log-file=stdout',
    '--simple-log',
    `--pidfile=${join(dir, 'turnserver.pid')}`,
    `--userdb=${join(dir, 'turndb')}`,
  ];
  const proc = spawn('turnserver', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  const keep = (d) => {
    log.push(...d.toString().split('\n').filter(Boolean));
    if (log.length > 300) log.splice(0, log.length - 300);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  const failed = new Promise((_, reject) => {
    proc.on('error', (e) => reject(new Error(`coturn (turnserver) cannot start: ${e.message}; install the coturn package`)));
    proc.on('exit', (code) => reject(new Error(`coturn exited (code ${code}):\n${log.join('\n')}`)));
  });
  failed.catch(() => {}); // after the start, an exit is expected (stopProc)
  await Promise.race([
    failed,
    waitFor(() => log.some((l) => /Total General servers|turn server id=\d+ created/.test(l)), {
      timeout: 10_000,
      what: 'coturn to start',
    }),
  ]);
  await sleep(300);
  return { proc, port, log, minPort, maxPort: minPort + 999 };
}

async function stopProc(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(timer);
}

async function openPage(browser, server, p, room, index, extra = {}) {
  const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
  const page = await context.newPage();
  const { consoleLog } = watchPage(page, server.baseUrl);
  await page.addInitScript(fakeMediaScript, { rgb: p.rgb, tone: 300 + 200 * index });
  await page.goto(`${server.baseUrl}?${new URLSearchParams({ room, name: p.name, ...extra })}`);
  return { ...p, context, page, consoleLog };
}

test('relay only: media through a local coturn with time-limited TURN REST credentials', { timeout: 120_000 }, async () => {
  const secret = `s-${process.pid}-${Date.now()}`;
  let turn;
  let server;
  let browser;
  const people = [];
  try {
    turn = await startCoturn(secret);
    server = await startServer({
      prefix: 'giaoban-turn-',
      settings: {
        GIAOBAN_AUTH_OPEN_ROOMS: 'true',
        GIAOBAN_TURN_URLS: `turn:127.0.0.1:${turn.port}?transport=udp`,
        GIAOBAN_TURN_SECRET: secret,
      },
    });
    browser = await launchBrowser();
    const room = `giao-ban-relay-${Date.now()}`;
    for (const [i, p] of PEOPLE.entries()) people.push(await openPage(browser, server, p, room, i, { relay: '1' }));

    // Each page got credentials of the REST scheme for itself ("<expiry>:<participant>"), in the future.
    for (const p of people) {
      await waitFor(() => p.page.evaluate(() => window.giaoban.state().joined), { what: `"${p.name}" to join` });
      // A hall joining where others publish builds its publish connection after its first subscribe answer
      // (at most 400 ms after joining, web client's PUBLISH_AFTER_SUBSCRIBE_MAX_MS): wait for it.
      const cfg = await waitFor(
        () => p.page.evaluate(() => window.giaoban.publishPc()?.getConfiguration() ?? null),
        { what: `"${p.name}" to have a publish connection` },
      );
      assert.ok(cfg, `"${p.name}" has a publish connection`);
      assert.equal(cfg.iceTransportPolicy, 'relay');
      const [server0] = cfg.iceServers;
      assert.deepEqual(server0.urls, [`turn:127.0.0.1:${turn.port}?transport=udp`]);
      const [expiry] = server0.username.split(':');
      assert.ok(Number(expiry) > Date.now() / 1000 + 3600, `credential expiry ${expiry} lies ahead`);
      assert.ok(server0.credential.length >= 20, 'an HMAC-SHA1 credential');
    }

    await bothDecode(people);

    for (const p of people) {
      for (const leg of ['publish', 'subscribe']) {
        const pair = await waitFor(() => selectedPair(p.page, leg), { what: `"${p.name}" ${leg} selected pair` });
        assert.equal(pair.local.candidateType, 'relay', `"${p.name}" ${leg}: ${JSON.stringify(pair)}`);
        // Allocated by our coturn: a relay port from the range it was given.
        assert.ok(
          pair.local.port >= turn.minPort && pair.local.port <= turn.maxPort,
          `"${p.name}" ${leg}: relay port ${pair.local.port} outside coturn's ${turn.minPort}-${turn.maxPort}`,
        );
      }
    }
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, people)}\n--- coturn log (tail) ---\n${turn?.log.slice(-40).join('\n')}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server);
    await stopProc(turn?.proc);
  }
});

test('UDP blocked: Chromium reaches the server over ICE-TCP', { timeout: 120_000 }, async () => {
  // The namespace's name starts with the branch name (net), as the shared rules ask.
  const ns = `net-tcp-${process.pid}`;
  const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  let server;
  let browser;
  const people = [];
  try {
    run('ip', ['netns', 'add', ns]);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // The firewall of a commune hall that lets no UDP through at all.
    run('ip', ['netns', 'exec', ns, 'iptables', '-A', 'OUTPUT', '-p', 'udp', '-j', 'DROP']);
    run('ip', ['netns', 'exec', ns, 'iptables', '-A', 'INPUT', '-p', 'udp', '-j', 'DROP']);

    const tcpPort = await freeTcpPort(); // any port: the namespace has its own
    server = await startServer({
      prefix: 'giaoban-tcp-',
      settings: { GIAOBAN_AUTH_OPEN_ROOMS: 'true', GIAOBAN_MEDIA_TCP_PORT: String(tcpPort) },
      wrap: ['ip', 'netns', 'exec', ns],
    });
    // Chromium inside the namespace: a wrapper that execs it there (Playwright talks to it over pipes).
    const wrapper = join(tmp, 'chromium-in-ns.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await launchBrowser([], wrapper);

    const room = `giao-ban-tcp-${Date.now()}`;
    for (const [i, p] of PEOPLE.entries()) people.push(await openPage(browser, server, p, room, i));
    await bothDecode(people);
    for (const p of people) {
      for (const leg of ['publish', 'subscribe']) {
        const pair = await waitFor(() => selectedPair(p.page, leg), { what: `"${p.name}" ${leg} selected pair` });
        assert.equal(pair.local.protocol, 'tcp', `"${p.name}" ${leg}: ${JSON.stringify(pair)}`);
        assert.equal(pair.remote.protocol, 'tcp', `"${p.name}" ${leg}: ${JSON.stringify(pair)}`);
        assert.equal(pair.remote.port, tcpPort, `"${p.name}" ${leg} uses the server's TCP port`);
      }
    }
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server);
    removeNetns(ns);
  }
});

test('UDP open: with the TCP port offered too, Chromium still uses UDP', { timeout: 90_000 }, async () => {
  let server;
  let browser;
  const people = [];
  try {
    const tcpPort = await freeTcpPort();
    server = await startServer({
      prefix: 'giaoban-udp-first-',
      settings: { GIAOBAN_AUTH_OPEN_ROOMS: 'true', GIAOBAN_MEDIA_TCP_PORT: String(tcpPort) },
    });
    browser = await launchBrowser();
    const room = `giao-ban-udp-${Date.now()}`;
    for (const [i, p] of PEOPLE.entries()) people.push(await openPage(browser, server, p, room, i));
    await bothDecode(people);
    for (const p of people) {
      for (const leg of ['publish', 'subscribe']) {
        const pair = await waitFor(() => selectedPair(p.page, leg), { what: `"${p.name}" ${leg} selected pair` });
        assert.equal(pair.remote.protocol, 'udp', `"${p.name}" ${leg}: ${JSON.stringify(pair)}`);
      }
    }
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server);
  }
});

/**
 * A namespace with a veth pair carrying 10.77.0.1/24 and fd77::1/64 (both ends inside), the server listening on
 * `::` (dual-stack), and Chromium there too; `blocked` ('ipv4' or 'ipv6') is the UDP family its firewall drops.
 * Both pages must decode each other, over a pair whose remote (server) address is of the other family.
 */
async function dualStackCase(blocked) {
  const ns = `net-ds${blocked === 'ipv4' ? 4 : 6}-${process.pid}`;
  const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  let server;
  let browser;
  const people = [];
  try {
    run('ip', ['netns', 'add', ns]);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    run('ip', ['-n', ns, 'link', 'add', 'gb0', 'type', 'veth', 'peer', 'name', 'gb1']);
    run('ip', ['-n', ns, 'addr', 'add', '10.77.0.1/24', 'dev', 'gb0']);
    run('ip', ['-n', ns, 'addr', 'add', 'fd77::1/64', 'dev', 'gb0', 'nodad']);
    run('ip', ['-n', ns, 'link', 'set', 'gb0', 'up']);
    run('ip', ['-n', ns, 'link', 'set', 'gb1', 'up']);
    const tables = blocked === 'ipv4' ? 'iptables' : 'ip6tables';
    run('ip', ['netns', 'exec', ns, tables, '-A', 'INPUT', '-p', 'udp', '-j', 'DROP']);

    server = await startServer({
      prefix: 'giaoban-ds-',
      // Media on `::` inside the namespace: its announced addresses are 10.77.0.1 and fd77::1.
      settings: { GIAOBAN_AUTH_OPEN_ROOMS: 'true', GIAOBAN_MEDIA_LISTEN_IP: '::' },
      wrap: ['ip', 'netns', 'exec', ns],
    });
    const wrapper = join(tmp, `chromium-in-${ns}.sh`);
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await launchBrowser([], wrapper);
    const room = `giao-ban-ds-${Date.now()}`;
    for (const [i, p] of PEOPLE.entries()) people.push(await openPage(browser, server, p, room, i));
    await bothDecode(people);
    const want = blocked === 'ipv4' ? 'fd77::1' : '10.77.0.1';
    for (const p of people) {
      for (const leg of ['publish', 'subscribe']) {
        const pair = await waitFor(() => selectedPair(p.page, leg), { what: `"${p.name}" ${leg} selected pair` });
        assert.equal(pair.remote.address, want, `"${p.name}" ${leg}: ${JSON.stringify(pair)}`);
        assert.equal(pair.remote.protocol, 'udp');
      }
    }
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server);
    removeNetns(ns);
  }
}

test('dual-stack media port: IPv6 host candidates carry media when IPv4 UDP is blocked', { timeout: 120_000 }, () =>
  dualStackCase('ipv4'),
);

test('dual-stack media port: IPv4 peers of the :: socket carry media when IPv6 UDP is blocked', { timeout: 120_000 }, () =>
  dualStackCase('ipv6'),
);
