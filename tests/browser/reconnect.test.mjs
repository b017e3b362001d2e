// A commune hall whose network drops for 30 s comes back by itself (issue #4), in real headless Chromium against
// the real server binary.
//
// Two network namespaces joined by a veth pair: `screen-rc-<pid>-<s>` holds the server (media on 10.79.0.1), the chair
// and hall B (each its own Chromium context); `screen-rh-<pid>-<s>` holds hall A's Chromium (10.79.0.2). Hall A raises
// its hand and gets the floor; everyone decodes everyone. Then hall A's firewall drops every packet, both ways, for
// 30 s (its WebSocket and its media alike), and lets them through again (and again with a 10 s cut). Without a reload, hall A must be back as
// the same participant (same id, still holding the floor), decode the chair and hall B again, and they must decode
// hall A again — while the others never saw hall A leave (its tile stays the whole time, same id). The time from
// the link's return to all pictures flowing again is printed.
//
// Needs root (network namespaces, iptables).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CHROMIUM,
  colourMatches,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  findLink,
  launchBrowser,
  meanColour,
  removeNetns,
  sleep,
  startServer,
  stopServer,
  videosDecoding,
  waitFor,
  watchPage,
} from './harness.mjs';

const SERVER_IP = '10.79.0.1';
const HALL_IP = '10.79.0.2';
const CHAIR = { key: 'chair', rgb: [230, 20, 20], tone: 330 };
const HALL_A = { key: 'UBND xã An Phú', rgb: [20, 210, 20], tone: 440 };
const HALL_B = { key: 'UBND xã Bình Minh', rgb: [20, 20, 230], tone: 550 };

const tmp = mkdtempSync(join(tmpdir(), 'giaoban-reconnect-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** Chromium started inside namespace `ns` (Playwright talks to it over pipes). */
function chromiumIn(ns) {
  const wrapper = join(tmp, `chromium-in-${ns}.sh`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return wrapper;
}

/** Frames decoded at `page` of the camera of participant `id` (inbound-rtp video matched by mid). */
const cameraFrames = (page, id) =>
  page.evaluate(async (id) => {
    const g = window.giaoban;
    const pc = g?.subscribePc();
    const p = g?.participants().find((x) => x.id === id);
    if (!pc || !p) return 0;
    const ids = p.tracks.filter((tr) => tr.source === 'camera').map((tr) => tr.id);
    const mids = Object.entries(g.midMap())
      .filter(([, m]) => ids.includes(m.trackId))
      .map(([mid]) => mid);
    let frames = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && mids.includes(s.mid)) frames += s.framesDecoded ?? 0;
    });
    return frames;
  }, id);

/** `page` decodes the camera of participant `id`: its frames go up, and its tile shows `rgb`. */
async function seesCamera(page, id, rgb, what, timeout = 30_000) {
  const f0 = await cameraFrames(page, id);
  await waitFor(async () => (await cameraFrames(page, id)) > f0 + 5, { timeout, what: `${what}: frames` });
  await waitFor(
    async () => colourMatches(await meanColour(page, `[data-testid="tile"][data-participant-id="${id}"] video`), rgb),
    { timeout, what: `${what}: colour` },
  );
}

async function cutCase(t, cutMs, bound) {
  const nsServer = `screen-rc-${process.pid}-${cutMs / 1000}`;
  const nsHall = `screen-rh-${process.pid}-${cutMs / 1000}`;
  let server;
  const browsers = [];
  const people = [];
  let cutRules = [];
  const uncut = () => {
    for (const rule of cutRules) {
      try {
        run('ip', ['netns', 'exec', nsHall, 'iptables', '-D', ...rule]);
      } catch {
        // already gone
      }
    }
    cutRules = [];
  };
  try {
    for (const ns of [nsServer, nsHall]) {
      run('ip', ['netns', 'add', ns]);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    run('ip', ['-n', nsServer, 'link', 'add', 'rc0', 'type', 'veth', 'peer', 'name', 'rc1', 'netns', nsHall]);
    run('ip', ['-n', nsServer, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'rc0']);
    run('ip', ['-n', nsHall, 'addr', 'add', `${HALL_IP}/24`, 'dev', 'rc1']);
    run('ip', ['-n', nsServer, 'link', 'set', 'rc0', 'up']);
    run('ip', ['-n', nsHall, 'link', 'set', 'rc1', 'up']);

    server = await startServer({
      prefix: 'giaoban-reconnect-',
      demo: true,
      settings: { GIAOBAN_HTTP_LISTEN: '0.0.0.0:0', GIAOBAN_MEDIA_LISTEN_IP: SERVER_IP },
      wrap: ['ip', 'netns', 'exec', nsServer],
    });
    const port = new URL(server.baseUrl).port;
    const local = `http://127.0.0.1:${port}`;
    const remote = `http://${SERVER_IP}:${port}`;
    const browserHere = await launchBrowser([], chromiumIn(nsServer));
    browsers.push(browserHere);
    // Hall A reaches the server at 10.79.0.1 over plain HTTP: a secure context only by this flag (camera API).
    const browserHall = await launchBrowser([`--unsafely-treat-insecure-origin-as-secure=${remote}`], chromiumIn(nsHall));
    browsers.push(browserHall);

    const open = async (browser, who, origin, pred) => {
      const link = findLink(server, pred, who.key);
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const page = await context.newPage();
      const { consoleLog } = watchPage(page, origin);
      await page.addInitScript(fakeMediaScript, { rgb: who.rgb, tone: who.tone });
      await page.goto(`${origin}/?${new URL(link.url).searchParams}`);
      const p = { ...who, label: who.key, context, page, consoleLog };
      people.push(p);
      const st = await waitFor(() => page.evaluate(() => window.giaoban.state().joined && window.giaoban.state()), {
        what: `"${who.key}" to join`,
      });
      p.id = st.selfId;
      p.name = st.name;
      return p;
    };
    const chair = await open(browserHere, CHAIR, local, (l) => l.name.endsWith('(Chủ trì)'));
    const b = await open(browserHere, HALL_B, local, (l) => l.name === HALL_B.key);
    const a = await open(browserHall, HALL_A, remote, (l) => l.name === HALL_A.key);

    // Hall A asks for the floor and gets it.
    await a.page.getByTestId('raise-hand').click();
    const row = chair.page.locator(`[data-testid="queue-row"][data-participant="${a.name}"]`);
    await row.waitFor({ state: 'visible', timeout: 10_000 });
    await row.getByTestId('grant').click();
    await waitFor(() => a.page.evaluate(() => window.giaoban.state().holdsFloor), { timeout: 10_000, what: 'A to hold the floor' });

    // Everyone decodes everyone.
    await waitFor(async () => (await videosDecoding(a.page)) >= 2, { timeout: 30_000, what: 'A to decode two videos' });
    await seesCamera(a.page, chair.id, CHAIR.rgb, "A sees the chair's camera");
    await seesCamera(a.page, b.id, HALL_B.rgb, "A sees B's camera");
    await seesCamera(b.page, a.id, HALL_A.rgb, "B sees A's camera");
    await seesCamera(chair.page, a.id, HALL_A.rgb, "the chair sees A's camera");
    await a.page.evaluate(() => {
      window.notReloaded = true;
    });

    // Hall A's link drops: every packet, both ways, for `cutMs`. The others keep A's tile (same id) all along.
    cutRules = [
      ['INPUT', '-i', 'rc1', '-j', 'DROP'],
      ['OUTPUT', '-o', 'rc1', '-j', 'DROP'],
    ];
    for (const rule of cutRules) run('ip', ['netns', 'exec', nsHall, 'iptables', '-I', ...rule]);
    const cutAt = Date.now();
    const seen = [];
    while (Date.now() - cutAt < cutMs) {
      for (const p of [chair, b]) {
        const present = await p.page.evaluate(
          (id) => window.giaoban.participants().some((x) => x.id === id) && !!document.querySelector(`[data-testid="tile"][data-participant-id="${id}"]`),
          a.id,
        );
        assert.ok(present, `${p.label} lost hall A's tile ${Date.now() - cutAt} ms into the cut`);
      }
      const st = await a.page.evaluate(() => window.giaoban.state());
      seen.push(`${Math.round((Date.now() - cutAt) / 1000)}s ws=${st.ws} publish=${st.publish} subscribe=${st.subscribe}`);
      await sleep(1000);
    }
    uncut();
    const backAt = Date.now();
    t.diagnostic(`hall A during the cut: ${seen.filter((_, i) => i % 5 === 0).join(' | ')}`);

    // Back by itself: same page, same participant, still holding the floor; pictures flow both ways again.
    const st = await waitFor(
      () =>
        a.page.evaluate(() => {
          const s = window.giaoban.state();
          return s.joined && s.publish === 'connected' && s.subscribe === 'connected' && s;
        }),
      { timeout: 60_000, what: 'hall A to be joined and connected again' },
    );
    const joinedAfter = Date.now() - backAt;
    assert.equal(st.selfId, a.id, 'hall A came back as the same participant');
    assert.equal(st.holdsFloor, true, 'hall A still holds the floor');
    assert.equal(await a.page.evaluate(() => window.notReloaded === true), true, 'the page was not reloaded');
    // The SFU's view meanwhile (diagnostics): what B receives of A's camera, and A's layers as they arrive.
    const timeline = [];
    let sampling = true;
    const sampler = (async () => {
      const token = new URL(server.adminUrl).searchParams.get('token');
      while (sampling) {
        try {
          // The server lives in its namespace: asked from the chair's page there (same origin).
          const body = await chair.page.evaluate(async (tok) => (await fetch(`/api/health?token=${tok}`)).json(), token);
          const of = (id) => body.participants.find((x) => x.participant_id === id);
          const cam = of(a.id)?.producers?.find((x) => x.kind === 'video');
          const rec = of(b.id)?.receiving?.find((x) => x.track_id === cam?.track_id);
          const layers = (cam?.layers ?? []).map((l) => `${l.rid}${l.paused ? '-' : ''}:${l.packets}`).join(',');
          timeline.push(
            `${Date.now() - backAt}ms A[${layers}] B:${rec ? `${rec.layer ?? '·'}→${rec.target ?? '·'}${rec.paused ? ' paused' : ''} ${rec.packets}` : 'none'}`,
          );
        } catch {
          // The server is busy or between states: the next sample will do.
        }
        await sleep(250);
      }
    })();
    // All four pictures at once (each its own wait), each with the time it took.
    const steps = await Promise.all(
      [
        [a.page, chair.id, CHAIR.rgb, "A sees the chair's camera"],
        [a.page, b.id, HALL_B.rgb, "A sees B's camera"],
        [b.page, a.id, HALL_A.rgb, "B sees A's camera"],
        [chair.page, a.id, HALL_A.rgb, "the chair sees A's camera"],
      ].map(async ([page, id, rgb, what]) => {
        await seesCamera(page, id, rgb, `after the cut, ${what}`);
        return `${what} ${Date.now() - backAt} ms`;
      }),
    );
    const allBack = Date.now() - backAt;
    sampling = false;
    await sampler;
    t.diagnostic(`after the link came back: ${steps.join('; ')}`);
    t.diagnostic(`the SFU meanwhile (A's camera layers rid:packets, '-' paused; B's layer→target): ${timeline.filter((_, i) => i % 2 === 0).join(' | ')}`);
    for (const p of [chair, b]) {
      const ids = await p.page.evaluate(() => window.giaoban.participants().map((x) => x.id));
      assert.ok(ids.includes(a.id), `${p.label} knows hall A by the same id`);
      assert.equal(ids.length, 2, `${p.label} sees two others, no ghost of hall A: ${ids}`);
    }
    t.diagnostic(
      `${cutMs / 1000} s cut: link back → hall A joined and connected after ${joinedAfter} ms; all four pictures flowing after ${allBack} ms`,
    );
    // Generous for a loaded CI machine; the figure above is what it took.
    assert.ok(allBack < bound, `hall A took ${allBack} ms to come back`);
  } catch (err) {
    err.message += `\n${harnessDiagnostics(server, people)}`;
    throw err;
  } finally {
    uncut();
    for (const p of people) await p.context.close().catch(() => {});
    for (const br of browsers) await br.close().catch(() => {});
    await stopServer(server);
    for (const ns of [nsServer, nsHall]) {
      removeNetns(ns);
    }
  }
}

// The issue's case: up to 30 s. The server gives up on the hall's connections after 15 s (suspends it, keeping its
// tile), the page rejoins by itself and resumes the same participant.
test('a hall cut off for 30 s comes back by itself, as itself', { timeout: 240_000 }, (t) => cutCase(t, 30_000, 30_000));

// A shorter cut: the connections survive it (ICE recovers once packets flow again), nothing is renegotiated.
test('a hall cut off for 10 s comes back by itself, as itself', { timeout: 240_000 }, (t) => cutCase(t, 10_000, 15_000));
