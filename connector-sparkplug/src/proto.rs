//! The Sparkplug B protobuf messages, written by hand as prost derive structs, field for field
//! from `proto/sparkplug_b.proto` (package `org.eclipse.tahu.protobuf`, proto2, Sparkplug 3.0).
//! There is no protoc and no build script: the Python cross-check (`scripts/sparkplug-check.py`)
//! compiles the `.proto` file itself and decodes what these structs encode.
//!
//! proto2 `extensions` ranges have no prost equivalent: extension fields on the wire are skipped
//! like any unknown field, and the empty `*Extension` messages decode to nothing.
//!
//! ```
//! use connector_sparkplug::proto::Payload;
//! use prost::Message;
//! let payload = Payload { seq: Some(3), ..Payload::default() };
//! let bytes = payload.encode_to_vec();
//! assert_eq!(Payload::decode(bytes.as_slice()).unwrap().seq, Some(3));
//! ```

/// A Sparkplug B payload: the body of every NBIRTH, NDATA, NDEATH, NCMD, DBIRTH, DDATA,
/// DDEATH and DCMD message.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch (UTC) when the message was created.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics of the message.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<payload::Metric>,
    /// The edge node's sequence number, 0 to 255 (absent in NDEATH).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// An identifier of the payload's schema or content, when the sender sets one.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Opaque bytes outside any metric.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// The messages nested in `Payload`.
pub mod payload {
    /// A template (a user-defined type: a definition in NBIRTH, or an instance).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Template {
        /// The template's version.
        #[prost(string, optional, tag = "1")]
        pub version: Option<String>,
        /// The metrics of the template (recursively: templates may contain templates).
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        /// The template's parameters.
        #[prost(message, repeated, tag = "3")]
        pub parameters: Vec<template::Parameter>,
        /// For an instance: the name of its definition.
        #[prost(string, optional, tag = "4")]
        pub template_ref: Option<String>,
        /// True for a definition (in NBIRTH), false for an instance.
        #[prost(bool, optional, tag = "5")]
        pub is_definition: Option<bool>,
    }

    /// The messages nested in `Template`.
    pub mod template {
        /// A template parameter: a name, a datatype and a value.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Parameter {
            /// The parameter's name.
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            /// The parameter's datatype (a Sparkplug datatype number).
            #[prost(uint32, optional, tag = "2")]
            pub r#type: Option<u32>,
            /// The parameter's value.
            #[prost(oneof = "parameter::Value", tags = "3, 4, 5, 6, 7, 8, 9")]
            pub value: Option<parameter::Value>,
        }

        /// The messages nested in `Parameter`.
        pub mod parameter {
            /// The value of a template parameter.
            #[derive(Clone, PartialEq, ::prost::Oneof)]
            pub enum Value {
                /// Int8, Int16, Int32 (two's complement), UInt8, UInt16, UInt32.
                #[prost(uint32, tag = "3")]
                IntValue(u32),
                /// Int64 (two's complement), UInt64, DateTime.
                #[prost(uint64, tag = "4")]
                LongValue(u64),
                /// Float.
                #[prost(float, tag = "5")]
                FloatValue(f32),
                /// Double.
                #[prost(double, tag = "6")]
                DoubleValue(f64),
                /// Boolean.
                #[prost(bool, tag = "7")]
                BooleanValue(bool),
                /// String, Text, UUID.
                #[prost(string, tag = "8")]
                StringValue(String),
                /// An extension (no fields known here).
                #[prost(message, tag = "9")]
                ExtensionValue(ParameterValueExtension),
            }

            /// A placeholder for extension values (`extensions 1 to max`).
            #[derive(Clone, Copy, PartialEq, ::prost::Message)]
            pub struct ParameterValueExtension {}
        }
    }

    /// A table: named, typed columns and rows of values.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DataSet {
        /// The number of columns.
        #[prost(uint64, optional, tag = "1")]
        pub num_of_columns: Option<u64>,
        /// The column names.
        #[prost(string, repeated, tag = "2")]
        pub columns: Vec<String>,
        /// The column datatypes (Sparkplug datatype numbers).
        #[prost(uint32, repeated, packed = "false", tag = "3")]
        pub types: Vec<u32>,
        /// The rows.
        #[prost(message, repeated, tag = "4")]
        pub rows: Vec<data_set::Row>,
    }

    /// The messages nested in `DataSet`.
    pub mod data_set {
        /// One cell of a data set.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct DataSetValue {
            /// The cell's value.
            #[prost(oneof = "data_set_value::Value", tags = "1, 2, 3, 4, 5, 6, 7")]
            pub value: Option<data_set_value::Value>,
        }

        /// The messages nested in `DataSetValue`.
        pub mod data_set_value {
            /// The value of a data set cell.
            #[derive(Clone, PartialEq, ::prost::Oneof)]
            pub enum Value {
                /// Int8, Int16, Int32 (two's complement), UInt8, UInt16, UInt32.
                #[prost(uint32, tag = "1")]
                IntValue(u32),
                /// Int64 (two's complement), UInt64, DateTime.
                #[prost(uint64, tag = "2")]
                LongValue(u64),
                /// Float.
                #[prost(float, tag = "3")]
                FloatValue(f32),
                /// Double.
                #[prost(double, tag = "4")]
                DoubleValue(f64),
                /// Boolean.
                #[prost(bool, tag = "5")]
                BooleanValue(bool),
                /// String, Text, UUID.
                #[prost(string, tag = "6")]
                StringValue(String),
                /// An extension (no fields known here).
                #[prost(message, tag = "7")]
                ExtensionValue(DataSetValueExtension),
            }

            /// A placeholder for extension values (`extensions 1 to max`).
            #[derive(Clone, Copy, PartialEq, ::prost::Message)]
            pub struct DataSetValueExtension {}
        }

        /// A row of a data set: one value per column.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Row {
            /// The cells, in column order.
            #[prost(message, repeated, tag = "1")]
            pub elements: Vec<DataSetValue>,
        }
    }

    /// The value of a property (in a metric's property set).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertyValue {
        /// The property's datatype (a Sparkplug datatype number).
        #[prost(uint32, optional, tag = "1")]
        pub r#type: Option<u32>,
        /// True when the property has no value.
        #[prost(bool, optional, tag = "2")]
        pub is_null: Option<bool>,
        /// The property's value.
        #[prost(oneof = "property_value::Value", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
        pub value: Option<property_value::Value>,
    }

    /// The messages nested in `PropertyValue`.
    pub mod property_value {
        /// The value of a property.
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Value {
            /// Int8, Int16, Int32 (two's complement), UInt8, UInt16, UInt32.
            #[prost(uint32, tag = "3")]
            IntValue(u32),
            /// Int64 (two's complement), UInt64, DateTime.
            #[prost(uint64, tag = "4")]
            LongValue(u64),
            /// Float.
            #[prost(float, tag = "5")]
            FloatValue(f32),
            /// Double.
            #[prost(double, tag = "6")]
            DoubleValue(f64),
            /// Boolean.
            #[prost(bool, tag = "7")]
            BooleanValue(bool),
            /// String, Text, UUID.
            #[prost(string, tag = "8")]
            StringValue(String),
            /// PropertySet.
            #[prost(message, tag = "9")]
            PropertysetValue(super::PropertySet),
            /// PropertySetList.
            #[prost(message, tag = "10")]
            PropertysetsValue(super::PropertySetList),
            /// An extension (no fields known here).
            #[prost(message, tag = "11")]
            ExtensionValue(PropertyValueExtension),
        }

        /// A placeholder for extension values (`extensions 1 to max`).
        #[derive(Clone, Copy, PartialEq, ::prost::Message)]
        pub struct PropertyValueExtension {}
    }

    /// A set of properties: `keys[i]` names `values[i]`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertySet {
        /// The property names.
        #[prost(string, repeated, tag = "1")]
        pub keys: Vec<String>,
        /// The property values, in the order of `keys`.
        #[prost(message, repeated, tag = "2")]
        pub values: Vec<PropertyValue>,
    }

    /// A list of property sets.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PropertySetList {
        /// The property sets.
        #[prost(message, repeated, tag = "1")]
        pub propertyset: Vec<PropertySet>,
    }

    /// Metadata of a metric (files, multi-part values).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct MetaData {
        /// True when the value is one part of a larger one.
        #[prost(bool, optional, tag = "1")]
        pub is_multi_part: Option<bool>,
        /// The MIME type of the value.
        #[prost(string, optional, tag = "2")]
        pub content_type: Option<String>,
        /// The size of the value in bytes.
        #[prost(uint64, optional, tag = "3")]
        pub size: Option<u64>,
        /// The part's sequence number, for a multi-part value.
        #[prost(uint64, optional, tag = "4")]
        pub seq: Option<u64>,
        /// The file name, for a File.
        #[prost(string, optional, tag = "5")]
        pub file_name: Option<String>,
        /// The file type, for a File.
        #[prost(string, optional, tag = "6")]
        pub file_type: Option<String>,
        /// The MD5 sum of the value.
        #[prost(string, optional, tag = "7")]
        pub md5: Option<String>,
        /// A free-form description.
        #[prost(string, optional, tag = "8")]
        pub description: Option<String>,
    }

    /// A metric: a name (or an alias announced in BIRTH), a datatype and a value.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Metric {
        /// The metric's name (may be absent in DATA when an alias is given).
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// The alias announced in BIRTH.
        #[prost(uint64, optional, tag = "2")]
        pub alias: Option<u64>,
        /// Milliseconds since the Unix epoch (UTC) of the value.
        #[prost(uint64, optional, tag = "3")]
        pub timestamp: Option<u64>,
        /// The datatype (a Sparkplug datatype number; required in BIRTH).
        #[prost(uint32, optional, tag = "4")]
        pub datatype: Option<u32>,
        /// True for a historical value (not the current one).
        #[prost(bool, optional, tag = "5")]
        pub is_historical: Option<bool>,
        /// True for a value that should not be stored.
        #[prost(bool, optional, tag = "6")]
        pub is_transient: Option<bool>,
        /// True when the metric has no value.
        #[prost(bool, optional, tag = "7")]
        pub is_null: Option<bool>,
        /// Metadata (files, multi-part values).
        #[prost(message, optional, tag = "8")]
        pub metadata: Option<MetaData>,
        /// Properties (e.g. `Quality`, engineering units).
        #[prost(message, optional, tag = "9")]
        pub properties: Option<PropertySet>,
        /// The value.
        #[prost(oneof = "metric::Value", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
        pub value: Option<metric::Value>,
    }

    /// The messages nested in `Metric`.
    pub mod metric {
        /// The value of a metric.
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Value {
            /// Int8, Int16, Int32 (two's complement), UInt8, UInt16, UInt32.
            #[prost(uint32, tag = "10")]
            IntValue(u32),
            /// Int64 (two's complement), UInt64, DateTime.
            #[prost(uint64, tag = "11")]
            LongValue(u64),
            /// Float.
            #[prost(float, tag = "12")]
            FloatValue(f32),
            /// Double.
            #[prost(double, tag = "13")]
            DoubleValue(f64),
            /// Boolean.
            #[prost(bool, tag = "14")]
            BooleanValue(bool),
            /// String, Text, UUID.
            #[prost(string, tag = "15")]
            StringValue(String),
            /// Bytes, File and every array type (packed little-endian).
            #[prost(bytes = "vec", tag = "16")]
            BytesValue(Vec<u8>),
            /// DataSet.
            #[prost(message, tag = "17")]
            DatasetValue(super::DataSet),
            /// Template.
            #[prost(message, tag = "18")]
            TemplateValue(super::Template),
            /// An extension (no fields known here).
            #[prost(message, tag = "19")]
            ExtensionValue(MetricValueExtension),
        }

        /// A placeholder for extension values (`extensions 1 to max`).
        #[derive(Clone, Copy, PartialEq, ::prost::Message)]
        pub struct MetricValueExtension {}
    }
}
