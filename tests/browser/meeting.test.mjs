// End-to-end: the real giaoban server binary and headless Chromium (see /work/shared/BROWSER-TESTING.md).
//
// Three participants join one room through join links, each publishing a canvas of its own colour and an
// oscillator. Every page must decode the other two (getStats on its subscribe connection) and show each
// remote participant's colour in that participant's <video data-participant="NAME">; audio is sent as RED
// (redundant Opus). Then one leaves and its tile must disappear from the others.
//
// Run: `npm test` here (node --test). GIAOBAN_BIN overrides the server binary (default target/debug/giaoban).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  colourMatches,
  diagnostics as harnessDiagnostics,
  fakeMediaScript,
  inboundStats,
  launchBrowser,
  meanColour,
  metric,
  outboundStats,
  publishAudioCodecs,
  sleep,
  startServer,
  stopServer,
  waitFor,
  watchPage,
} from './harness.mjs';

const PARTICIPANTS = [
  { name: 'UBND xã Đỏ', rgb: [230, 20, 20], colour: 'red' },
  { name: 'UBND phường Xanh Lá', rgb: [20, 210, 20], colour: 'green' },
  { name: 'UBND thị trấn Xanh Dương', rgb: [20, 20, 230], colour: 'blue' },
];

let server; // { proc, baseUrl, log, dataDir }
let browser;

// ------------------------------------------------------------------------------------------------------------
// Helpers

async function openParticipant(p, room, index) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  const { consoleLog, foreignRequests } = watchPage(page, server.baseUrl);
  await page.addInitScript(fakeMediaScript, { rgb: p.rgb, tone: 300 + 150 * index });
  const link = `${server.baseUrl}?${new URLSearchParams({ room, name: p.name })}`;
  await page.goto(link);
  return { ...p, context, page, consoleLog, foreignRequests };
}

const diagnostics = (people) => harnessDiagnostics(server, people);

// ------------------------------------------------------------------------------------------------------------

before(async () => {
  // The join links of this test name open rooms (`/?room=&name=`), so open rooms are switched on; a server from
  // before those settings existed refuses them as unknown: then it is started again without them.
  server = await startServer({ settings: { GIAOBAN_AUTH_OPEN_ROOMS: 'true' }, fallback: true });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopServer(server);
});

test('the page without a join link shows the Vietnamese join form', { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const foreign = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server.baseUrl) && !r.url().startsWith('data:')) foreign.push(r.url());
    });
    await page.goto(server.baseUrl);
    const form = page.getByTestId('join-form');
    await form.waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'vi');
    const formText = await form.innerText();
    assert.match(formText, /Phòng họp/);
    assert.match(formText, /Tên điểm cầu/);
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Tham gia');
    assert.equal(await page.getByTestId('meeting-view').isVisible(), false);

    // The English switch changes the form and persists across a reload.
    await page.getByTestId('lang').click();
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Join');
    await page.reload();
    await page.getByTestId('join-form').waitFor({ state: 'visible' });
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Join');
    await page.getByTestId('lang').click();
    assert.equal((await page.getByTestId('join').innerText()).trim(), 'Tham gia');

    assert.deepEqual(foreign, [], 'the page must load nothing from outside the server');
  } finally {
    await context.close();
  }
});

test('three halls see and hear each other; a leaver disappears', { timeout: 100_000 }, async (t) => {
  const room = `giao-ban-${Date.now()}`;
  const people = [];
  try {
    for (const [i, p] of PARTICIPANTS.entries()) people.push(await openParticipant(p, room, i));

    // Every page joined (its own debug hook) and publishes (its publish connection's real stats).
    for (const p of people) {
      await waitFor(() => p.page.evaluate(() => window.giaoban.state().joined), {
        what: `"${p.name}" to join`,
      });
    }
    for (const p of people) {
      await waitFor(
        async () => {
          const out = await outboundStats(p.page);
          return out && out.audio > 0 && out.video > 0 && out;
        },
        { what: `"${p.name}" to send audio and video` },
      );
    }
    // The web client puts RED ahead of Opus and the server's answer keeps that order, so Chromium sends RED
    // (its stats name the Opus inside); the server counts the RED packets it receives.
    for (const p of people) {
      assert.deepEqual((await publishAudioCodecs(p.page)).slice(0, 2), ['red', 'opus'], `"${p.name}" negotiated RED first`);
    }
    const red = await metric(server, 'giaoban_media_red_received_total');
    await waitFor(async () => (await metric(server, 'giaoban_media_red_received_total')) >= red + 50, {
      what: 'the server to receive RED audio',
    });

    // Each page decodes two video streams and receives two audio streams on its subscribe connection.
    for (const p of people) {
      const stats = await waitFor(
        async () => {
          const s = await inboundStats(p.page);
          return s && s.videoDecoding >= 2 && s.audioReceiving >= 2 && s;
        },
        { what: `"${p.name}" to decode 2 videos and receive 2 audios` },
      );
      t.diagnostic(`${p.name}: ${JSON.stringify(stats)}`);
    }
    // Chromium offers AES-CM SRTP only: the SFU seals what it forwards to the pages itself all the same (the fast
    // path), stamps each packet with a transport-wide sequence number, and the pages report what arrived.
    const cipher = await people[0].page.evaluate(async () => {
      const found = [];
      (await window.giaoban.publishPc().getStats()).forEach((s) => {
        if (s.type === 'transport') found.push(s.srtpCipher);
      });
      return found.join(',');
    });
    t.diagnostic(`SRTP profile of "${people[0].name}": ${cipher}`);
    const sealed = await metric(server, 'giaoban_media_rtp_sealed_total');
    const twcc = await metric(server, 'giaoban_media_twcc_feedback_total');
    await waitFor(async () => (await metric(server, 'giaoban_media_rtp_sealed_total')) >= sealed + 300, {
      what: 'the server to seal what it forwards to the pages',
    });
    await waitFor(async () => (await metric(server, 'giaoban_media_twcc_feedback_total')) >= twcc + 30, {
      what: 'transport-wide CC feedback from the pages',
    });

    // Each remote tile shows its publisher's colour.
    for (const viewer of people) {
      for (const other of people) {
        if (other === viewer) continue;
        const mean = await waitFor(
          async () => {
            const m = await meanColour(viewer.page, { participant: other.name });
            return colourMatches(m, other.rgb) && m;
          },
          { what: `"${viewer.name}" to show ${other.colour} for "${other.name}"` },
        );
        t.diagnostic(`${viewer.name} sees ${other.name} as rgb(${mean.join(',')})`);
      }
      // Own preview is not a remote tile.
      const remoteTiles = await viewer.page.locator('video[data-participant]').count();
      assert.equal(remoteTiles, 2, `"${viewer.name}" has exactly two remote tiles`);
    }

    // The RED audio forwarded to each page is played: over two seconds, most of the 20 ms per packet received is
    // decoded audio, not concealment (RED a receiver could not decode would be concealed all through; start-up
    // concealment on a loaded machine is left out of the window).
    for (const p of people) {
      const audioOf = async () => {
        const s = await inboundStats(p.page);
        return s?.audio.filter((a) => a.packetsReceived > 0) ?? [];
      };
      const before = await waitFor(
        async () => {
          const a = await audioOf();
          return a.length >= 2 && a;
        },
        { what: `"${p.name}" to receive audio from each other hall` },
      );
      await sleep(2000);
      const after = await audioOf();
      for (const a of after) {
        const b = before.find((x) => x.ssrc === a.ssrc);
        if (!b) continue;
        const packets = a.packetsReceived - b.packetsReceived;
        const played = (a.samples - b.samples - (a.concealed - b.concealed)) / (960 * Math.max(packets, 1));
        assert.ok(packets >= 50, `"${p.name}" keeps receiving audio ${JSON.stringify({ b, a })}`);
        assert.ok(played >= 0.5, `"${p.name}" plays ${(played * 100).toFixed(0)} % of ${JSON.stringify({ b, a })}`);
      }
    }

    // Switching the camera off is relayed (media_state) to the others' tiles.
    const [, second, third] = people;
    await third.page.getByTestId('camera').click();
    await waitFor(
      () =>
        second.page.evaluate((name) => {
          const video = document.querySelector(`video[data-participant="${CSS.escape(name)}"]`);
          return video?.closest('.tile')?.querySelector('[data-testid="tile-camera"]')?.dataset.on === 'false';
        }, third.name),
      { timeout: 10_000, what: `"${second.name}" to see the camera of "${third.name}" off` },
    );
    await third.page.getByTestId('camera').click();

    // One hall leaves: its tile disappears from the other two pages.
    const [leaver, ...stayers] = people;
    await leaver.page.getByRole('button', { name: 'Rời cuộc họp' }).click();
    await leaver.page.getByTestId('join-form').waitFor({ state: 'visible', timeout: 5_000 });
    for (const p of stayers) {
      await waitFor(
        () =>
          p.page.evaluate(
            (name) => document.querySelector(`[data-participant="${CSS.escape(name)}"]`) === null,
            leaver.name,
          ),
        { timeout: 10_000, what: `"${leaver.name}" to leave the page of "${p.name}"` },
      );
      assert.equal(await p.page.locator('video[data-participant]').count(), 1);
    }

    for (const p of people) assert.deepEqual(p.foreignRequests, [], `"${p.name}" loaded nothing external`);
  } catch (err) {
    err.message += `\n${diagnostics(people)}`;
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
  }
});
