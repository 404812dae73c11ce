//! Conversion of DAG-JSON (`{"$link": cid}`, `{"$bytes": base64}`) into DAG-CBOR values, for
//! turning JSON fixtures into wire frames.

use base64::Engine as _;
use ciborium::Value;

/// Converts a DAG-JSON value into a CBOR value. Map keys are sorted as DAG-CBOR requires
/// (shorter keys first, then bytewise).
pub fn to_cbor(json: &serde_json::Value) -> anyhow::Result<Value> {
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(value) => Value::Bool(*value),
        serde_json::Value::Number(number) => Value::Integer(integer_of(number)?.into()),
        serde_json::Value::String(text) => Value::Text(text.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(to_cbor).collect::<anyhow::Result<_>>()?),
        serde_json::Value::Object(map) => {
            if map.len() == 1 {
                if let Some(serde_json::Value::String(link)) = map.get("$link") {
                    let cid = cid::Cid::try_from(link.as_str())?;
                    let mut bytes = vec![0];
                    bytes.extend(cid.to_bytes());
                    return Ok(Value::Tag(42, Box::new(Value::Bytes(bytes))));
                }
                if let Some(serde_json::Value::String(encoded)) = map.get("$bytes") {
                    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
                    let bytes = engine.decode(encoded.trim_end_matches('='))?;
                    return Ok(Value::Bytes(bytes));
                }
            }
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            let mut converted = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                converted.push((Value::Text(key.clone()), to_cbor(value)?));
            }
            Value::Map(converted)
        }
    })
}

/// The integer a JSON number stands for. The atproto data model has no floats, but its JSON form
/// accepts an integer written with a zero fraction, such as `123.0`.
pub fn integer_of(number: &serde_json::Number) -> anyhow::Result<i64> {
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() < 2f64.powi(53) => Ok(float as i64),
        _ => anyhow::bail!("number {number} is not a 64-bit integer"),
    }
}

/// Encodes a CBOR value.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// Builds a wire frame: the header `{op: 1, t: message_type}` followed by the body.
pub fn message_frame(message_type: &str, body: &Value) -> Vec<u8> {
    let header = Value::Map(vec![
        (Value::Text("t".into()), Value::Text(message_type.into())),
        (Value::Text("op".into()), Value::Integer(1.into())),
    ]);
    let mut frame = encode(&header);
    frame.extend(encode(body));
    frame
}
