// End-to-end: a giao ban (lecture meeting) with the real server binary and headless Chromium.
//
// The server starts with an empty data directory, so it creates the demo meeting "Giao ban thử nghiệm" and prints
// its join links. The chair and two halls join through those links, each publishing a canvas of its own colour and
// an oscillator. Hall A raises its hand, the chair gives it the floor: hall B must start receiving A's audio (it
// received none before: in lecture mode the server forwards only the chair and the holder of the floor) and show A
// as the main picture. The chair mutes everyone: A's audio at B stops. The chair shares its screen (real
// getDisplayMedia: Chromium picks the screen by itself with --auto-select-desktop-capture-source): both halls decode
// it and show it as the main picture. Chat and roll call are checked on the way; the admin page creates a hall.
//
// Run: `npm test` here. GIAOBAN_BIN overrides the server binary (default target/debug/giaoban).
// WEB_CLIENT_FROM_DISK=1 serves web-client/ from disk instead of the copy embedded in the binary (for working on
// the client without rebuilding the server).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import {
  CLIENT_FILES,
  FROM_DISK_ARGS,
  SCREENSHOT_DIR,
  colourMatches,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  findLink,
  launchBrowser,
  inboundStats,
  meanColour,
  serveClientFromDisk,
  sleep,
  startServer,
  stopServer,
  videosDecoding,
  waitFor,
  watchPage,
} from './harness.mjs';

const WEB_FILES = {
  ...CLIENT_FILES,
  '/admin': ['admin.html', 'text/html; charset=utf-8'],
  '/admin.js': ['admin.js', 'text/javascript; charset=utf-8'],
};

// The chair's camera is 960x540: with simulcast (on by default) Chromium sends all three layers.
const CHAIR = { key: 'chair', rgb: [230, 20, 20], colour: 'red', tone: 330, width: 960, height: 540 };
const HALL_A = { key: 'UBND xã An Phú', rgb: [20, 210, 20], colour: 'green', tone: 440 };
const HALL_B = { key: 'UBND xã Bình Minh', rgb: [20, 20, 230], colour: 'blue', tone: 550 };

let server; // { proc, baseUrl, log, adminUrl, links: [{name, url}], dataDir }
let browser;

// ------------------------------------------------------------------------------------------------------------
// Helpers

const linkFor = (pred, what) => findLink(server, pred, what);

async function newPage(label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await serveClientFromDisk(context, server.baseUrl, WEB_FILES);
  const page = await context.newPage();
  const { consoleLog, foreignRequests } = watchPage(page, server.baseUrl);
  return { label, context, page, consoleLog, foreignRequests };
}

async function openParticipant(who, url) {
  const p = await newPage(who.key);
  await p.page.addInitScript(fakeMediaScript, { rgb: who.rgb, tone: who.tone, width: who.width, height: who.height });
  await p.page.goto(url);
  return { ...who, ...p };
}

/** Packets received on the subscribe connection for `name`'s microphone (inbound-rtp matched by mid). */
async function audioPackets(page, name) {
  return page.evaluate(async (name) => {
    const g = window.giaoban;
    const pc = g?.subscribePc();
    const p = g?.participants().find((x) => x.name === name);
    if (!pc || !p) return { total: 0, found: false };
    const ids = p.tracks.filter((t) => t.kind === 'audio' && t.source !== 'screen').map((t) => t.id);
    const mids = Object.entries(g.midMap())
      .filter(([, m]) => ids.includes(m.trackId))
      .map(([mid]) => mid);
    const report = await pc.getStats();
    let total = 0;
    let found = false;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio' && mids.includes(s.mid)) {
        total += s.packetsReceived ?? 0;
        found = true;
      }
    });
    return { total, found, mids };
  }, name);
}

/** What a page knows about its received audio: participants' tracks, the mid map, inbound-rtp audio stats. */
async function audioDebug(page) {
  return page.evaluate(async () => {
    const g = window.giaoban;
    const pc = g?.subscribePc();
    const stats = [];
    if (pc) {
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') stats.push({ mid: s.mid, packets: s.packetsReceived });
      });
    }
    return {
      state: g?.state().meetingState,
      participants: g?.participants().map((p) => ({ name: p.name, tracks: p.tracks, receiving: p.receiving })),
      midMap: g?.midMap(),
      transceivers: pc?.getTransceivers().map((t) => ({ mid: t.mid, dir: t.currentDirection, kind: t.receiver.track.kind })),
      stats,
    };
  });
}

/** How many packets of `name`'s audio arrive at `page` within `ms`. */
async function audioDelta(page, name, ms = 1500) {
  const a = await audioPackets(page, name);
  await sleep(ms);
  const b = await audioPackets(page, name);
  return b.total - a.total;
}

const mainVideo = '[data-testid="main-video"]';
const mainInfo = (page) =>
  page.evaluate(() => {
    const v = document.querySelector('[data-testid="main-video"]');
    const stage = document.querySelector('[data-testid="main-stage"]');
    return v && { participant: v.dataset.participant, source: v.dataset.source, visible: !stage.hidden, width: v.videoWidth };
  });

/** Frames decoded at `page` of the camera of participant `id` (inbound-rtp video matched by mid). */
const cameraFrames = (page, id) =>
  page.evaluate(async (id) => {
    const g = window.giaoban;
    const p = g.participants().find((x) => x.id === id);
    const ids = (p?.tracks || []).filter((tr) => tr.source === 'camera').map((tr) => tr.id);
    const mids = Object.entries(g.midMap())
      .filter(([, m]) => ids.includes(m.trackId))
      .map(([mid]) => mid);
    let frames = 0;
    (await g.subscribePc().getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && mids.includes(s.mid)) frames += s.framesDecoded ?? 0;
    });
    return frames;
  }, id);

const diagnostics = (people) => harnessDiagnostics(server, people);

// ------------------------------------------------------------------------------------------------------------

before(async () => {
  // An empty data directory without open rooms: the server creates the demo meeting and prints its links.
  server = await startServer({ prefix: 'giaoban-briefing-', demo: true });
  // getDisplayMedia without a picker: the (fake) screen is chosen by itself.
  browser = await launchBrowser(['--auto-select-desktop-capture-source=Entire screen', ...FROM_DISK_ARGS]);
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopServer(server);
});

test('giao ban: raise hand, give the floor, mute all, share the screen', { timeout: 90_000 }, async (t) => {
  const chairLink = linkFor((l) => l.name.endsWith('(Chủ trì)'), 'chair');
  const aLink = linkFor((l) => l.name === HALL_A.key, HALL_A.key);
  const bLink = linkFor((l) => l.name === HALL_B.key, HALL_B.key);
  const people = [];
  try {
    const chair = await openParticipant(CHAIR, chairLink.url);
    people.push(chair);
    const a = await openParticipant(HALL_A, aLink.url);
    people.push(a);
    const b = await openParticipant(HALL_B, bLink.url);
    people.push(b);

    // Everyone joined with the role from the link, sees the meeting title, and the views differ by role.
    for (const p of people) {
      const st = await waitFor(() => p.page.evaluate(() => window.giaoban.state().joined && window.giaoban.state()), {
        what: `"${p.label}" to join`,
      });
      p.name = st.name;
      p.id = st.selfId;
      assert.equal(st.role, p === chair ? 'chair' : 'endpoint');
      assert.equal((await p.page.getByTestId('meeting-title').innerText()).trim(), 'Giao ban thử nghiệm');
      assert.match(await p.page.getByTestId('meeting-mode').innerText(), /Chỉ đạo/);
    }
    assert.equal(chair.name, chairLink.name);
    assert.equal(await chair.page.getByTestId('chair-tools').isVisible(), true);
    assert.equal(await chair.page.getByTestId('raise-hand').isVisible(), false);
    assert.equal(await a.page.getByTestId('chair-tools').isVisible(), false);
    assert.equal(await a.page.getByTestId('raise-hand').isVisible(), true);
    assert.equal(await a.page.getByTestId('share-screen').isVisible(), false, 'a hall shares only with the floor');

    // B decodes the chair's and A's cameras; it hears the chair but, in lecture mode, not A.
    await waitFor(async () => (await videosDecoding(b.page)) >= 2, { what: 'B to decode two videos' }).catch(async (err) => {
      err.message += `\nB trace: ${JSON.stringify(await b.page.evaluate(() => window.giaoban.trace()))}`;
      throw err;
    });
    await waitFor(async () => (await audioDelta(b.page, chair.name, 800)) > 0, { what: "B to receive the chair's audio" }).catch(
      async (err) => {
        err.message += `\nB: ${JSON.stringify(await audioDebug(b.page))}\nB trace: ${JSON.stringify(await b.page.evaluate(() => window.giaoban.trace()))}`;
        throw err;
      },
    );
    // The chair is the main picture at the halls.
    await waitFor(async () => (await mainInfo(b.page))?.participant === chair.name, { what: 'B main picture = chair' });
    const before = await audioDelta(b.page, a.name, 2500);
    t.diagnostic(`A's audio at B before the floor: +${before} packets in 2.5 s`);
    assert.equal(before, 0, "B must not receive A's audio before A has the floor");

    // The roll call board at the chair: the two halls present, the third absent.
    await waitFor(
      () =>
        chair.page.evaluate(() => {
          const rows = [...document.querySelectorAll('[data-testid="rollcall-row"]')];
          const status = Object.fromEntries(rows.map((r) => [r.dataset.name, r.dataset.status]));
          return (
            status['UBND xã An Phú'] === 'present' &&
            status['UBND xã Bình Minh'] === 'present' &&
            status['UBND phường Tân Tiến'] === 'absent' &&
            status
          );
        }),
      { timeout: 10_000, what: 'the roll call board at the chair' },
    );

    // The attendance report link of the chair's page (the documented URL with the page's own token).
    const csvHref = await chair.page.getByTestId('attendance-csv').getAttribute('href');
    assert.match(csvHref, /^\/api\/meetings\/[^/]+\/attendance\.csv\?token=/);
    const csv = await chair.page.evaluate(async (href) => {
      const res = await fetch(href);
      return { status: res.status, type: res.headers.get('content-type') };
    }, csvHref);
    assert.equal(csv.status, 200, `attendance CSV ${csvHref.replace(/token=.*/, 'token=…')}`);
    assert.match(csv.type, /text\/csv/);

    // Recording: the chair starts it, every hall shows the ĐANG GHI badge until the chair stops it.
    assert.equal(await a.page.getByTestId('recording').isVisible(), false);
    await chair.page.getByTestId('record').click();
    for (const p of people) {
      await p.page.getByTestId('recording').waitFor({ state: 'visible', timeout: 5_000 });
      assert.equal((await p.page.getByTestId('recording').innerText()).trim(), 'ĐANG GHI');
    }
    assert.equal((await chair.page.getByTestId('record').innerText()).trim(), 'Dừng ghi');
    await sleep(2500);
    await chair.page.getByTestId('record').click();
    for (const p of people) await p.page.getByTestId('recording').waitFor({ state: 'hidden', timeout: 5_000 });
    assert.equal((await chair.page.getByTestId('record').innerText()).trim(), 'Ghi hình');
    // Chromium's real Opus and VP8, as recorded, decode without a single error (ffmpeg), and the manifest names
    // the chair's files.
    const recRoot = join(server.dataDir, 'recordings');
    const manifest = await waitFor(
      () => {
        if (!existsSync(recRoot)) return null;
        for (const m of readdirSync(recRoot)) {
          for (const r of readdirSync(join(recRoot, m))) {
            const f = join(recRoot, m, r, 'manifest.json');
            const json = existsSync(f) && JSON.parse(readFileSync(f, 'utf8'));
            if (json?.status === 'complete') return { dir: join(recRoot, m, r), json };
          }
        }
        return null;
      },
      { timeout: 10_000, what: 'the recording manifest to be complete' },
    );
    const chairFiles = manifest.json.files.filter((f) => f.name === chair.name && f.file);
    assert.deepEqual(chairFiles.map((f) => f.kind).sort(), ['audio', 'video'], JSON.stringify(manifest.json.files));
    for (const f of chairFiles) {
      const path = join(manifest.dir, f.file);
      // `-enc_time_base -1`: the null output keeps the file's millisecond times. By default ffmpeg 5.1 re-times it
      // to the guessed frame rate, and two real frames closer than one frame apart (Chromium's burst after a
      // keyframe request) then collide there: a muxing complaint about its own output, not a decoding error.
      const decode = spawnSync('ffmpeg', ['-v', 'error', '-i', path, '-enc_time_base', '-1', '-f', 'null', '-'], {
        encoding: 'utf8',
      });
      assert.equal(decode.status, 0, `ffmpeg decoding ${f.file}: ${decode.stderr} (${JSON.stringify(f)})`);
      assert.equal(decode.stderr.trim(), '', `ffmpeg decoding ${f.file} reports errors`);
      const probe = JSON.parse(
        execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-show_entries', 'stream=codec_name,nb_read_frames', '-of', 'json', path], {
          encoding: 'utf8',
        }),
      );
      const stream = probe.streams[0];
      t.diagnostic(`recorded ${f.kind}: ${stream.codec_name}, ${stream.nb_read_frames} frames decoded, ${f.duration_ms} ms`);
      assert.equal(stream.codec_name, f.kind === 'audio' ? 'opus' : 'vp8');
      assert.ok(Number(stream.nb_read_frames) >= (f.kind === 'audio' ? 50 : 10), `${f.file}: ${stream.nb_read_frames} frames decoded`);
    }

    await a.page.getByTestId('raise-hand').click();
    const row = chair.page.locator(`[data-testid="queue-row"][data-participant="${a.name}"]`);
    await row.waitFor({ state: 'visible', timeout: 10_000 });
    await waitFor(async () => /1/.test(await a.page.getByTestId('hand-position').innerText()), {
      timeout: 5_000,
      what: "A's place in the queue",
    });
    assert.match(await a.page.getByTestId('raise-hand').innerText(), /Hạ tay/);

    // The chair gives A the floor for 3 minutes: A sees its banner with the time left, B receives A's audio and
    // shows A as the main picture.
    await row.getByTestId('grant-seconds').selectOption('180');
    await row.getByTestId('grant').click();
    await a.page.getByTestId('floor-banner').waitFor({ state: 'visible', timeout: 10_000 });
    assert.match(await a.page.getByTestId('floor-banner').innerText(), /Bạn đang được phát biểu – còn [23]:\d\d/);
    await chair.page.locator(`[data-testid="floor-row"][data-participant="${a.name}"]`).waitFor({ timeout: 5_000 });
    const during = await waitFor(
      async () => {
        const d = await audioDelta(b.page, a.name, 1000);
        return d > 0 && d;
      },
      { timeout: 15_000, what: "B to receive A's audio after the grant" },
    ).catch(async (err) => {
      err.message += `\nB: ${JSON.stringify(await audioDebug(b.page))}\nA: ${JSON.stringify(await a.page.evaluate(() => window.giaoban.state()))}`;
      throw err;
    });
    t.diagnostic(`A's audio at B with the floor: +${during} packets in 1 s`);
    await waitFor(async () => (await mainInfo(b.page))?.participant === a.name, {
      timeout: 10_000,
      what: 'B main picture = A',
    });
    const mean = await waitFor(
      async () => {
        const m = await meanColour(b.page, mainVideo);
        return colourMatches(m, HALL_A.rgb) && m;
      },
      { timeout: 10_000, what: `B's main picture to show ${HALL_A.colour}` },
    );
    t.diagnostic(`B's main picture: rgb(${mean.join(',')})`);

    // Chat reaches everyone.
    await chair.page.getByTestId('chat-input').fill('Điểm cầu An Phú phát biểu');
    await chair.page.getByTestId('chat-send').click();
    await b.page
      .locator('[data-testid="chat-line"]', { hasText: 'Điểm cầu An Phú phát biểu' })
      .waitFor({ timeout: 5_000 });

    // Mute all: A's client shows it is muted, and A's audio at B stops.
    await chair.page.getByTestId('mute-all').click();
    await waitFor(() => a.page.evaluate(() => window.giaoban.state().mutedByChair), {
      timeout: 5_000,
      what: 'A to be told it is muted',
    });
    assert.equal(await a.page.getByTestId('mic').getAttribute('data-on'), 'false');
    await waitFor(async () => (await audioDelta(b.page, a.name, 1500)) === 0, {
      timeout: 10_000,
      what: "A's audio at B to stop after mute all",
    });

    // The chair's camera goes out in three simulcast layers (the default).
    const chairOffer = await chair.page.evaluate(() => window.giaoban.publishPc().localDescription.sdp);
    assert.match(chairOffer, /a=simulcast:send q;h;f/, "the chair's camera is published in three layers");

    // The chair shares its screen on a connection of its own: both halls decode a third video and show the
    // screen as the main picture.
    await chair.page.getByTestId('share-screen').click();
    await waitFor(() => chair.page.evaluate(() => window.giaoban.state().sharing && window.giaoban.state().screen === 'connected'), {
      timeout: 10_000,
      what: "the chair to share its screen and its screen connection to connect",
    });
    for (const hall of [a, b]) {
      await waitFor(async () => (await videosDecoding(hall.page)) >= 3, {
        timeout: 20_000,
        what: `"${hall.label}" to decode the screen share`,
      });
      const info = await waitFor(
        async () => {
          const m = await mainInfo(hall.page);
          return m?.source === 'screen' && m.participant === chair.name && m.visible && m.width > 0 && m;
        },
        { timeout: 15_000, what: `"${hall.label}" to show the screen share large` },
      );
      const m = await meanColour(hall.page, mainVideo);
      t.diagnostic(`${hall.label} main picture: ${JSON.stringify(info)} rgb(${m?.join(',')})`);
      assert.ok(!colourMatches(m, CHAIR.rgb), "the main picture shows the screen, not the chair's camera");
    }

    // The chair stops sharing: its screen connection closes; its camera's connection was never renegotiated.
    await chair.page.getByTestId('share-screen').click();
    const stopped = await waitFor(
      () =>
        chair.page.evaluate((chairOffer) => {
          const pc = window.giaoban.publishPc();
          const st = window.giaoban.state();
          const live = pc.getTransceivers().filter((tr) => tr.sender.track && tr.currentDirection === 'sendonly');
          return (
            !st.sharing &&
            window.giaoban.screenPc() === null &&
            pc.signalingState === 'stable' && { live: live.length, same: pc.localDescription.sdp === chairOffer }
          );
        }, chairOffer),
      { timeout: 10_000, what: 'the chair to stop sharing' },
    );
    t.diagnostic(`after stopping the share the chair sends ${stopped.live} tracks`);
    assert.equal(stopped.live, 2, "the chair's microphone and camera go on");
    assert.ok(stopped.same, "the camera's publish connection was not renegotiated by the share");
    // The stopped screen leaves the room: each hall sees only the chair's microphone and camera again, and its
    // main picture is no longer a screen.
    for (const hall of [a, b]) {
      const tracks = await waitFor(
        async () => {
          const list = await hall.page.evaluate(
            (id) => window.giaoban.participants().find((p) => p.id === id)?.tracks.map((tr) => tr.source),
            chair.id,
          );
          return list && !list.includes('screen') && list;
        },
        { timeout: 10_000, what: `${hall.label}: the chair's screen track to be unpublished` },
      );
      const m = await mainInfo(hall.page);
      t.diagnostic(`${hall.label} after the share stopped: main ${m?.source}, chair's tracks ${JSON.stringify(tracks)}`);
      assert.notEqual(m?.source, 'screen', `${hall.label} still shows a screen as the main picture`);
      // The chair's simulcast camera still arrives after the share came and went: frames go on, in its colour.
      const f0 = await cameraFrames(hall.page, chair.id);
      await waitFor(async () => (await cameraFrames(hall.page, chair.id)) > f0 + 5, {
        timeout: 10_000,
        what: `${hall.label}: the chair's camera to keep decoding after the share`,
      });
      const colour = await waitFor(
        async () => {
          const c = await meanColour(hall.page, `[data-testid="tile"][data-participant-id="${chair.id}"] video`);
          return colourMatches(c, CHAIR.rgb) && c;
        },
        { timeout: 10_000, what: `${hall.label}: the chair's tile to show its red camera` },
      );
      t.diagnostic(`${hall.label}: chair's camera after the share rgb(${colour.join(',')})`);
    }

    // Ask to unmute: A gets a prompt, accepts, and its audio (it still holds the floor) reaches B again.
    await chair.page.locator(`[data-testid="tile"][data-participant-id="${a.id}"]`).hover();
    await chair.page
      .locator(`[data-testid="tile"][data-participant-id="${a.id}"] [data-testid="tile-ask-unmute"]`)
      .click({ timeout: 5_000 });
    await a.page.getByTestId('unmute-prompt').waitFor({ state: 'visible', timeout: 5_000 });
    await a.page.getByTestId('unmute-accept').click();
    await waitFor(async () => (await audioDelta(b.page, a.name, 1000)) > 0, {
      timeout: 10_000,
      what: "A's audio at B after A accepted to unmute",
    });

    // The observer (IT staff) watches only: no camera asked for, no publish connection, but it receives.
    const obsLink = linkFor((l) => l.name.includes('dự thính'), 'observer');
    const observer = await newPage('observer');
    people.push(observer);
    await observer.page.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = async () => {
        window.askedForMedia = true;
        throw new DOMException('observers must not ask', 'NotAllowedError');
      };
    });
    await observer.page.goto(obsLink.url);
    await waitFor(() => observer.page.evaluate(() => window.giaoban.state().joined), { what: 'the observer to join' });
    await waitFor(async () => (await videosDecoding(observer.page)) >= 3, { what: 'the observer to decode 3 videos' }).catch(
      async (err) => {
        const admin = new URL(server.adminUrl).searchParams.get('token');
        const health = await (await fetch(`${server.baseUrl}api/health?token=${admin}`)).json();
        err.message += `\nobserver inbound: ${JSON.stringify(await inboundStats(observer.page))}\nSFU: ${JSON.stringify(
          health.participants.map((p) => ({ name: p.name, producers: p.producers, receiving: p.receiving })),
        )}`;
        throw err;
      },
    );
    const obs = await observer.page.evaluate(() => ({
      role: window.giaoban.state().role,
      publishPc: window.giaoban.publishPc() !== null,
      asked: !!window.askedForMedia,
      mic: !document.querySelector('[data-testid="mic"]').hidden,
      hand: !document.querySelector('[data-testid="raise-hand"]').hidden,
    }));
    assert.deepEqual(obs, { role: 'observer', publishPc: false, asked: false, mic: false, hand: false });
    await observer.page.locator('[data-testid="chat-line"]', { hasText: 'Điểm cầu An Phú phát biểu' }).waitFor({ timeout: 5_000 });

    if (SCREENSHOT_DIR) {
      for (const p of people) await p.page.screenshot({ path: join(SCREENSHOT_DIR, `briefing-${p.colour || p.label}.png`) });
      t.diagnostic(diagnostics(people));
    }
    for (const p of people) assert.deepEqual(p.foreignRequests, [], `"${p.label}" loaded nothing external`);
  } catch (err) {
    err.message += `\n${diagnostics(people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
  }
});

test('admin page: create a hall, see it listed; the secretary records an absence', { timeout: 45_000 }, async () => {
  const p = await newPage('admin');
  try {
    await p.page.goto(server.adminUrl);
    await p.page.getByTestId('endpoint-row').first().waitFor({ timeout: 10_000 });
    assert.ok(
      await p.page.locator('[data-testid="endpoint-row"]', { hasText: 'UBND xã An Phú' }).count(),
      'the demo halls are listed',
    );
    await p.page.getByTestId('endpoint-name').fill('UBND xã Thử Nghiệm');
    await p.page.getByTestId('endpoint-unit').fill('Huyện Kiểm Tra');
    await p.page.getByTestId('endpoint-create').click();
    await p.page.locator('[data-testid="endpoint-row"]', { hasText: 'UBND xã Thử Nghiệm' }).waitFor({ timeout: 10_000 });
    // The meeting list shows the demo meeting; its join links open.
    await p.page.locator('[data-testid="meeting-row"]', { hasText: 'Giao ban thử nghiệm' }).getByTestId('meeting-open').click();
    await p.page.locator('[data-testid="link-row"]').first().waitFor({ timeout: 10_000 });
    assert.ok((await p.page.locator('[data-testid="link-row"]').count()) >= 5);

    // The secretary's link (from the admin page): the queue and the roll call, not the chair's tools.
    const secUrl = await p.page.locator('[data-testid="link-row"][data-role="secretary"] [data-testid="link-open"]').getAttribute('href');
    const sec = await newPage('secretary');
    try {
      await sec.page.addInitScript(fakeMediaScript, { rgb: [200, 200, 20], tone: 660 });
      await sec.page.goto(secUrl);
      await waitFor(() => sec.page.evaluate(() => window.giaoban.state().role === 'secretary'), { what: 'the secretary to join' });
      await sec.page.getByTestId('rollcall-row').first().waitFor({ timeout: 10_000 });
      assert.equal(await sec.page.getByTestId('queue-panel').isVisible(), true);
      assert.equal(await sec.page.getByTestId('chair-tools').isVisible(), false);
      assert.equal(await sec.page.getByTestId('raise-hand').isVisible(), false);
      assert.equal(await sec.page.getByTestId('absence-reason').count(), await sec.page.getByTestId('rollcall-row').count());
      // Record a reason for an absent hall: the board shows "Vắng có lý do".
      const absent = sec.page.locator('[data-testid="rollcall-row"][data-name="UBND phường Tân Tiến"]');
      await absent.getByTestId('absence-reason').fill('Mất điện');
      await absent.getByTestId('absence-save').click();
      await sec.page
        .locator('[data-testid="rollcall-row"][data-name="UBND phường Tân Tiến"][data-status="absent_with_reason"]')
        .waitFor({ timeout: 5_000 });
    } finally {
      await sec.context.close().catch(() => {});
    }
    if (SCREENSHOT_DIR) {
      await p.page.getByTestId('attendance-show').click();
      await p.page.getByTestId('audit-show').click();
      await p.page.getByTestId('audit-row').first().waitFor({ timeout: 5_000 });
      await p.page.screenshot({ path: join(SCREENSHOT_DIR, 'admin.png'), fullPage: true });
    }
    assert.deepEqual(p.foreignRequests, []);
  } catch (err) {
    err.message += `\n${diagnostics([p])}`;
    throw err;
  } finally {
    await p.context.close().catch(() => {});
  }
});

test('no join token or secret reaches the server log', () => {
  // After a whole briefing (joins by link, floor, recording, admin page and API calls with tokens).
  assert.ok(server.logRecords.seen > 20, `the server logged records to check (${server.logRecords.seen})`);
  assert.deepEqual(server.logRecords.leaks, [], 'log records carrying a token or secret');
});
