// Example formatter: turns every created or updated Bluesky post into one message
// {"did":…,"rkey":…,"text":…,"langs":[…]} and drops every other event.
//
// componentize-js maps the WIT world onto this module: each export is a WIT export, a WIT
// variant arrives as {tag, val}, an absent option as undefined, and a `result<_, string>` or
// `result<T, string>` export returns its ok value or throws its error string.

const POST_COLLECTION = 'app.bsky.feed.post';
const MIN_TEXT_LENGTH = 'min-text-length';

// Posts whose text has fewer Unicode code points than this are dropped. `configure` sets it once
// per instance, before any `format` call.
let minTextChars = 0;

// In a `u` regular expression a surrogate pair is one code point, so only lone surrogates match.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

const encoder = new TextEncoder();

export function configure(options) {
  let value = 0;
  for (const [key, text] of options) {
    if (key !== MIN_TEXT_LENGTH) {
      throw `unknown option \`${key}\`: the posts formatter takes only \`${MIN_TEXT_LENGTH}\``;
    }
    value = parseNonNegative(text);
    if (value === undefined) {
      throw `invalid value \`${text}\` for option \`${MIN_TEXT_LENGTH}\`: expected a non-negative integer`;
    }
  }
  minTextChars = value;
}

export function format(event, _context) {
  if (event.tag !== 'commit-op') {
    return [];
  }
  const op = event.val;
  if (op.collection !== POST_COLLECTION || (op.action !== 'create' && op.action !== 'update')) {
    return [];
  }

  const uri = `at://${op.did}/${op.collection}/${op.rkey}`;
  if (op.record === undefined || op.record === null) {
    throw `the record of ${uri} is missing`;
  }
  const post = readPost(op.record, uri);

  // A string's length counts UTF-16 code units, but spreading it yields one item per code point.
  if ([...post.text].length < minTextChars) {
    return [];
  }

  const value = JSON.stringify({ did: op.did, rkey: op.rkey, text: post.text, langs: post.langs });
  return [{ value: encoder.encode(value), key: undefined, headers: [], topic: undefined }];
}

// Reads `text` and `langs` from a post record in atproto JSON, or throws the error string.
function readPost(recordJson, uri) {
  let record;
  try {
    record = JSON.parse(recordJson, rejectLoneSurrogates);
  } catch (error) {
    throw `the record of ${uri} is not valid JSON: ${error.message}`;
  }
  if (record === null || typeof record !== 'object' || Array.isArray(record)) {
    throw `the record of ${uri} is not a JSON object`;
  }

  const text = record.text;
  if (typeof text !== 'string') {
    throw `the record of ${uri} has no string \`text\``;
  }

  let langs = record.langs;
  if (langs === undefined || langs === null) {
    langs = [];
  } else if (!Array.isArray(langs) || !langs.every((lang) => typeof lang === 'string')) {
    throw `the record of ${uri} has a \`langs\` that is not a list of strings`;
  }

  return { text, langs };
}

// A JSON.parse reviver that rejects strings containing a lone UTF-16 surrogate, such as "\ud800".
// JSON.parse accepts them, but they are not Unicode text, and the Rust and Python examples reject
// them as invalid JSON.
function rejectLoneSurrogates(key, value) {
  if (LONE_SURROGATE.test(key) || (typeof value === 'string' && LONE_SURROGATE.test(value))) {
    throw new SyntaxError('a string contains a lone surrogate');
  }
  return value;
}

// Parses a decimal number made of ASCII digits only (no sign, no spaces). A number beyond
// Number.MAX_SAFE_INTEGER loses precision, which changes nothing because no text is that long.
function parseNonNegative(text) {
  if (!/^[0-9]+$/.test(text)) {
    return undefined;
  }
  return Number(text);
}
