//! Bytes written by hand from the protobuf encoding rules (not by our encoder), in the forms
//! other implementations send: Eclipse Tahu writes Int8 -1 sign-extended to 32 bits, the spec's
//! BooleanArray example, a DataSet with an unpacked `types` field. A wrong field number or wire
//! type in proto/sparkplug_b.proto or src/proto.rs fails here, whatever the Python check says.

#![allow(clippy::unwrap_used)]

use connector_sparkplug::{decode_metrics, decode_payload, DataSetValue, DataType, Value};

#[test]
fn hand_written_payload_bytes_decode_to_the_values_they_encode() {
    #[rustfmt::skip]
    let bytes: &[u8] = &[
        0x08, 0x01,                                     // timestamp = 1
        0x12, 0x0b,                                     // metrics[0], 11 bytes
            0x0a, 0x01, b'a',                           //   name = "a"
            0x20, 0x01,                                 //   datatype = 1 (Int8)
            0x50, 0xff, 0xff, 0xff, 0xff, 0x0f,         //   int_value (10) = 0xFFFFFFFF: -1
        0x12, 0x0e,                                     // metrics[1], 14 bytes
            0x0a, 0x01, b'b',                           //   name = "b"
            0x20, 0x20,                                 //   datatype = 32 (BooleanArray)
            0x82, 0x01, 0x06,                           //   bytes_value (16), 6 bytes
            0x0c, 0x00, 0x00, 0x00, 0x34, 0xd0,         //   12 booleans
        0x12, 0x17,                                     // metrics[2], 23 bytes
            0x0a, 0x01, b'c',                           //   name = "c"
            0x20, 0x10,                                 //   datatype = 16 (DataSet)
            0x8a, 0x01, 0x0f,                           //   dataset_value (17), 15 bytes
                0x08, 0x01,                             //     num_of_columns = 1
                0x12, 0x01, b'x',                       //     columns = ["x"]
                0x18, 0x02,                             //     types = [2] (Int16), unpacked
                0x22, 0x06,                             //     rows[0], 6 bytes
                    0x0a, 0x04,                         //       elements[0], 4 bytes
                        0x08, 0xfe, 0xff, 0x03,         //         int_value = 0xFFFE: -2
        0x18, 0x00,                                     // seq = 0
    ];
    let payload = decode_payload(bytes).unwrap();
    assert_eq!((payload.timestamp, payload.seq), (Some(1), Some(0)));
    let metrics = decode_metrics(&payload).unwrap();
    let values: Vec<(&str, DataType, &Value)> =
        metrics.iter().map(|m| (m.name.as_str(), m.datatype, &m.value)).collect();
    let bools = [false, false, true, true, false, true, false, false, true, true, false, true];
    let data_set = Value::DataSet(DataSetValue {
        columns: vec!["x".into()],
        types: vec![DataType::Int16],
        rows: vec![vec![Value::Int(-2)]],
    });
    assert_eq!(
        values,
        vec![
            ("a", DataType::Int8, &Value::Int(-1)),
            ("b", DataType::BooleanArray, &Value::BooleanArray(bools.to_vec())),
            ("c", DataType::DataSet, &data_set),
        ]
    );
}
