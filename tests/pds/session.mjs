// Plays a realistic session against a PDS started by run-pds.mjs and writes, as JSON, every event
// the PDS firehose must carry for it, in the order the PDS sequences them.
//
// Usage: node session.mjs --pds http://127.0.0.1:PORT --admin-password PASSWORD --out expected.json
//
// The session has five accounts. They create and update profiles with an avatar, and write posts
// with an image, with facets (mention, link, tag), a reply and a quote. They like, repost, follow,
// write a record of an unknown collection with a link and bytes, and delete. One applyWrites batch
// creates, updates and deletes in one commit. Then come a handle change, a deactivation and
// reactivation, an admin takedown and an admin account deletion.
//
// The output file:
//   {"pdsUrl": "...", "accounts": [{"name","did","handle"}],
//    "events": [
//      {"kind":"operation","did","action":"create"|"update"|"delete","collection","rkey","uri",
//       "cid": CID or null, "record": the value getRecord served, or null},
//      {"kind":"identity","did","handle"},
//      {"kind":"account","did","active","status": string or null},
//      {"kind":"sync","did","rev"}]}
// Records are atproto JSON exactly as `com.atproto.repo.getRecord` returned them right after the
// write. Account creation also sequences a commit without operations, which yields no event.

import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';

const { values: options } = parseArgs({
  options: {
    pds: { type: 'string' },
    'admin-password': { type: 'string' },
    out: { type: 'string' },
  },
});
for (const name of ['pds', 'admin-password', 'out']) {
  if (!options[name]) {
    console.error(`missing --${name}; usage: node session.mjs --pds URL --admin-password PASSWORD --out FILE`);
    process.exit(2);
  }
}
const pdsUrl = options.pds.replace(/\/$/, '');
const adminAuthorization = `Basic ${Buffer.from(`admin:${options['admin-password']}`).toString('base64')}`;

/** The expected firehose events, in sequencing order. */
const events = [];

// ---------------------------------------------------------------------------------------------
// XRPC

/**
 * Calls an XRPC method and returns its JSON output (or null for an empty body). `auth` is an
 * account (its access token is used) or the string 'admin'. A call with `body` or `blob`, or with
 * `procedure: true`, is a POST. Throws on any status other than 2xx.
 */
async function xrpc(method, { auth, params, body, blob, mimeType, procedure } = {}) {
  const url = new URL(`${pdsUrl}/xrpc/${method}`);
  for (const [key, value] of Object.entries(params ?? {})) {
    url.searchParams.set(key, value);
  }
  const headers = {};
  if (auth === 'admin') {
    headers.authorization = adminAuthorization;
  } else if (auth) {
    headers.authorization = `Bearer ${auth.accessJwt}`;
  }
  let payload;
  if (blob) {
    headers['content-type'] = mimeType;
    payload = blob;
  } else if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(url, { method: payload === undefined && !procedure ? 'GET' : 'POST', headers, body: payload });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} failed with HTTP ${response.status}: ${text}`);
  }
  return text ? JSON.parse(text) : null;
}

function parseAtUri(uri) {
  const match = /^at:\/\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(uri);
  if (!match) throw new Error(`not a record URI: ${uri}`);
  return { did: match[1], collection: match[2], rkey: match[3] };
}

/** Fetches a record with getRecord and adds the create or update event that carries it. */
async function expectWrite(action, uri, cidFromWrite) {
  const { did, collection, rkey } = parseAtUri(uri);
  const served = await xrpc('com.atproto.repo.getRecord', { params: { repo: did, collection, rkey } });
  if (served.uri !== uri || served.cid !== cidFromWrite) {
    throw new Error(`getRecord served ${served.uri} ${served.cid} after writing ${uri} ${cidFromWrite}`);
  }
  events.push({ kind: 'operation', did, action, collection, rkey, uri, cid: served.cid, record: served.value });
  return { uri, cid: served.cid };
}

function expectDelete(uri) {
  const { did, collection, rkey } = parseAtUri(uri);
  events.push({ kind: 'operation', did, action: 'delete', collection, rkey, uri, cid: null, record: null });
}

async function latestRev(account) {
  const latest = await xrpc('com.atproto.sync.getLatestCommit', { params: { did: account.did } });
  return latest.rev;
}

// ---------------------------------------------------------------------------------------------
// Writes

async function createRecord(account, collection, record, extra = {}) {
  const output = await xrpc('com.atproto.repo.createRecord', {
    auth: account,
    body: { repo: account.did, collection, record, ...extra },
  });
  return expectWrite('create', output.uri, output.cid);
}

/** Writes with putRecord; `action` is what the firehose reports: create for a new record, else update. */
async function putRecord(account, action, collection, rkey, record) {
  const output = await xrpc('com.atproto.repo.putRecord', {
    auth: account,
    body: { repo: account.did, collection, rkey, record },
  });
  return expectWrite(action, output.uri, output.cid);
}

async function deleteRecord(account, uri) {
  const { collection, rkey } = parseAtUri(uri);
  await xrpc('com.atproto.repo.deleteRecord', { auth: account, body: { repo: account.did, collection, rkey } });
  expectDelete(uri);
}

async function uploadBlob(account, bytes, mimeType) {
  const output = await xrpc('com.atproto.repo.uploadBlob', { auth: account, blob: bytes, mimeType });
  return output.blob;
}

function now() {
  return new Date().toISOString();
}

// ---------------------------------------------------------------------------------------------
// Content

/** Encodes an RGB image of `width` x `height` as PNG, with `pixel(x, y)` returning [r, g, b]. */
function encodePng(width, height, pixel) {
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3); // filter type 0, then the pixels
    for (let x = 0; x < width; x++) {
      row.set(pixel(x, y), 1 + x * 3);
    }
    rows.push(row);
  }
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const typeAndData = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(typeAndData));
    return Buffer.concat([length, typeAndData, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    signature,
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/**
 * Builds post text and its facets from parts: a string is plain text, and {mention: did, text},
 * {link: uri, text} or {tag} become a facet whose byte range covers the part's UTF-8 text.
 */
function richText(parts) {
  let text = '';
  const facets = [];
  for (const part of parts) {
    if (typeof part === 'string') {
      text += part;
      continue;
    }
    const partText = part.tag !== undefined ? `#${part.tag}` : part.text;
    const byteStart = Buffer.byteLength(text, 'utf8');
    text += partText;
    const byteEnd = Buffer.byteLength(text, 'utf8');
    let feature;
    if (part.mention) feature = { $type: 'app.bsky.richtext.facet#mention', did: part.mention };
    else if (part.link) feature = { $type: 'app.bsky.richtext.facet#link', uri: part.link };
    else feature = { $type: 'app.bsky.richtext.facet#tag', tag: part.tag };
    facets.push({ index: { byteStart, byteEnd }, features: [feature] });
  }
  return { text, facets };
}

// ---------------------------------------------------------------------------------------------
// Accounts

const suffix = crypto.randomBytes(3).toString('hex');
const accounts = [];

async function createAccount(name) {
  const handle = `${name}-${suffix}.test`;
  const password = crypto.randomBytes(12).toString('hex');
  const output = await xrpc('com.atproto.server.createAccount', {
    body: { handle, email: `${name}-${suffix}@example.com`, password },
  });
  const account = { name, did: output.did, handle: output.handle, accessJwt: output.accessJwt };
  accounts.push(account);
  // Account creation sequences #identity, #account, a #commit without operations and #sync.
  events.push({ kind: 'identity', did: account.did, handle: account.handle });
  events.push({ kind: 'account', did: account.did, active: true, status: null });
  events.push({ kind: 'sync', did: account.did, rev: await latestRev(account) });
  return account;
}

// ---------------------------------------------------------------------------------------------
// The session

const alice = await createAccount('alice');
const bob = await createAccount('bob');
const carol = await createAccount('carol');
const dave = await createAccount('dave');
const erin = await createAccount('erin');

// Profiles: alice creates hers with an avatar, then updates it.
const avatar = await uploadBlob(
  alice,
  encodePng(32, 32, (x, y) => [x * 8, y * 8, 128]),
  'image/png',
);
await putRecord(alice, 'create', 'app.bsky.actor.profile', 'self', {
  $type: 'app.bsky.actor.profile',
  displayName: 'Alice',
  description: 'Testing the firehose',
  avatar,
});
await putRecord(alice, 'update', 'app.bsky.actor.profile', 'self', {
  $type: 'app.bsky.actor.profile',
  displayName: 'Alice Liddell 🐇',
  description: 'Testing the firehose, with an updated profile',
  avatar,
});
await putRecord(bob, 'create', 'app.bsky.actor.profile', 'self', {
  $type: 'app.bsky.actor.profile',
  displayName: 'Bob',
});

// Follows.
const follows = [];
for (const [follower, subject] of [[alice, bob], [bob, alice], [carol, alice], [dave, alice], [erin, bob]]) {
  follows.push(
    await createRecord(follower, 'app.bsky.graph.follow', {
      $type: 'app.bsky.graph.follow',
      subject: subject.did,
      createdAt: now(),
    }),
  );
}

// A post with an image and facets.
const photo = await uploadBlob(
  alice,
  encodePng(64, 48, (x, y) => [255 - x * 4, (x + y) * 2, y * 5]),
  'image/png',
);
const imagePost = await createRecord(alice, 'app.bsky.feed.post', {
  $type: 'app.bsky.feed.post',
  ...richText([
    'Hello ',
    { mention: bob.did, text: `@${bob.handle}` },
    ', a gradient for you 🌈 — see ',
    { link: 'https://example.com/gradients?x=1', text: 'example.com/gradients' },
    ' ',
    { tag: 'firehose' },
  ]),
  langs: ['en'],
  embed: {
    $type: 'app.bsky.embed.images',
    images: [{ alt: 'A colour gradient', image: photo, aspectRatio: { width: 64, height: 48 } }],
  },
  createdAt: now(),
});

// A reply and a quote.
const reply = await createRecord(bob, 'app.bsky.feed.post', {
  $type: 'app.bsky.feed.post',
  text: 'Nice colours! Ünïcödé and 日本語 too.',
  reply: { root: imagePost, parent: imagePost },
  createdAt: now(),
});
const quote = await createRecord(carol, 'app.bsky.feed.post', {
  $type: 'app.bsky.feed.post',
  text: 'Look at this thread',
  embed: { $type: 'app.bsky.embed.record', record: imagePost },
  createdAt: now(),
});
const nestedReply = await createRecord(alice, 'app.bsky.feed.post', {
  $type: 'app.bsky.feed.post',
  text: 'Thanks!',
  reply: { root: imagePost, parent: reply },
  createdAt: now(),
});

// Likes and reposts.
const likeOfPost = await createRecord(bob, 'app.bsky.feed.like', {
  $type: 'app.bsky.feed.like',
  subject: imagePost,
  createdAt: now(),
});
await createRecord(carol, 'app.bsky.feed.like', { $type: 'app.bsky.feed.like', subject: reply, createdAt: now() });
await createRecord(alice, 'app.bsky.feed.like', { $type: 'app.bsky.feed.like', subject: quote, createdAt: now() });
const repost = await createRecord(bob, 'app.bsky.feed.repost', {
  $type: 'app.bsky.feed.repost',
  subject: imagePost,
  createdAt: now(),
});
await createRecord(dave, 'app.bsky.feed.repost', { $type: 'app.bsky.feed.repost', subject: quote, createdAt: now() });

// A record of a collection without a lexicon on the PDS, with the data model's other kinds:
// a CID link, bytes, null, booleans, negative and large integers, nesting and an empty string.
await createRecord(
  carol,
  'com.example.atkafka.sample',
  {
    $type: 'com.example.atkafka.sample',
    link: { $link: imagePost.cid },
    // Seven bytes, so that the base64 text differs with and without padding (`==`).
    bytes: { $bytes: Buffer.from([0, 1, 2, 250, 251, 255, 254]).toString('base64').replace(/=+$/, '') },
    nothing: null,
    flags: [true, false],
    counts: { negative: -42, large: 9007199254740991 },
    nested: [[{ deep: ['x'] }], []],
    empty: '',
    createdAt: now(),
  },
  { rkey: 'sample-1', validate: false },
);

// Deletes.
await deleteRecord(bob, likeOfPost.uri);
await deleteRecord(carol, follows[2].uri);
await deleteRecord(alice, nestedReply.uri);

// One applyWrites commit that creates a post, updates alice's profile and deletes a like.
const aliceLike = events.find(
  (event) => event.did === alice.did && event.collection === 'app.bsky.feed.like' && event.action === 'create',
);
const batchPost = {
  $type: 'app.bsky.feed.post',
  text: 'Written in one batch with a profile update and a delete',
  createdAt: now(),
};
const batch = await xrpc('com.atproto.repo.applyWrites', {
  auth: alice,
  body: {
    repo: alice.did,
    writes: [
      { $type: 'com.atproto.repo.applyWrites#create', collection: 'app.bsky.feed.post', value: batchPost },
      {
        $type: 'com.atproto.repo.applyWrites#update',
        collection: 'app.bsky.actor.profile',
        rkey: 'self',
        value: { $type: 'app.bsky.actor.profile', displayName: 'Alice (batched)', avatar },
      },
      { $type: 'com.atproto.repo.applyWrites#delete', collection: aliceLike.collection, rkey: aliceLike.rkey },
    ],
  },
});
const [batchCreate, batchUpdate] = batch.results;
await expectWrite('create', batchCreate.uri, batchCreate.cid);
await expectWrite('update', batchUpdate.uri, batchUpdate.cid);
expectDelete(aliceLike.uri);

// carol changes her handle.
carol.handle = `carol2-${suffix}.test`;
await xrpc('com.atproto.identity.updateHandle', { auth: carol, body: { handle: carol.handle } });
events.push({ kind: 'identity', did: carol.did, handle: carol.handle });

// bob deactivates his account and reactivates it.
await xrpc('com.atproto.server.deactivateAccount', { auth: bob, body: {} });
events.push({ kind: 'account', did: bob.did, active: false, status: 'deactivated' });
await xrpc('com.atproto.server.activateAccount', { auth: bob, procedure: true });
// Activation sequences #account, #identity and #sync, atomically.
events.push({ kind: 'account', did: bob.did, active: true, status: null });
events.push({ kind: 'identity', did: bob.did, handle: bob.handle });
events.push({ kind: 'sync', did: bob.did, rev: await latestRev(bob) });
await createRecord(bob, 'app.bsky.feed.post', { $type: 'app.bsky.feed.post', text: 'Back again', createdAt: now() });

// An admin takes erin's account down.
await createRecord(erin, 'app.bsky.feed.post', { $type: 'app.bsky.feed.post', text: 'Spam, spam, spam', createdAt: now() });
await xrpc('com.atproto.admin.updateSubjectStatus', {
  auth: 'admin',
  body: {
    subject: { $type: 'com.atproto.admin.defs#repoRef', did: erin.did },
    takedown: { applied: true, ref: 'atkafka-test-takedown' },
  },
});
events.push({ kind: 'account', did: erin.did, active: false, status: 'takendown' });

// An admin deletes dave's account. The deletion removes dave's earlier events from the PDS's
// sequencer table, and the PDS reads events from that table for its subscribers (polling at
// least once a second), so the deletion waits until the earlier events went out.
// NOTE: the wait assumes the PDS polls within 3 s; a slower PDS would drop dave's events.
await new Promise((resolve) => setTimeout(resolve, 3000));
await xrpc('com.atproto.admin.deleteAccount', { auth: 'admin', body: { did: dave.did } });
events.push({ kind: 'account', did: dave.did, active: false, status: 'deleted' });

const output = {
  pdsUrl,
  accounts: accounts.map(({ name, did, handle }) => ({ name, did, handle })),
  events,
};
await fs.writeFile(options.out, `${JSON.stringify(output, null, 2)}\n`);
console.log(`session done: ${accounts.length} accounts, ${events.length} expected events, written to ${options.out}`);
