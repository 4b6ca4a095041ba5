//! The contract's two bodies as typed structs, field by field as the partner reads them
//! (`contract/schemas/`). Every struct refuses unknown fields and is read as an object
//! only (see `values::object`); the values that carry a rule have types of their own.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::object;
use super::values::{BirthMillis, Identifier, Millis, NonEmpty, Phone, Source};

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub message: Option<String>,
    #[serde(rename = "supportProgramId")]
    pub support_program_id: Identifier,
    pub status: Option<String>,
    #[serde(deserialize_with = "object::required")]
    pub patient: EnrolledPatient,
    #[serde(rename = "sendDate", default, skip_serializing)]
    _send_date: Option<IgnoredAny>,
    #[serde(rename = "sourceName", default, skip_serializing)]
    _source_name: Option<IgnoredAny>,
    #[serde(rename = "eventName", default, skip_serializing)]
    _event_name: Option<IgnoredAny>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledPatient {
    pub id: Identifier,
    #[serde(rename = "phoneNumber")]
    pub phone_number: Phone,
    #[serde(rename = "firstName")]
    pub first_name: NonEmpty,
    #[serde(rename = "lastName")]
    pub last_name: NonEmpty,
    pub dob: Option<BirthMillis>,
    pub gender: Option<String>,
    pub contact_method: Option<String>,
    pub pref_language: Option<String>,
    pub email: Option<String>,
    pub call_time: Option<String>,
    #[serde(default, deserialize_with = "object::optional")]
    pub caregiver: Option<Caregiver>,
    #[serde(default, deserialize_with = "object::optional")]
    pub address: Option<Address>,
    #[serde(default, deserialize_with = "object::optional")]
    pub insurance: Option<Insurance>,
    #[serde(default, deserialize_with = "object::optional")]
    pub signature: Option<Signature>,
    #[serde(default, deserialize_with = "object::optional_list")]
    pub consents: Option<Vec<Consent>>,
    #[serde(
        rename = "externalIds",
        default,
        deserialize_with = "object::optional_list"
    )]
    pub external_ids: Option<Vec<ExternalId>>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caregiver {
    pub name: Option<String>,
    pub relationship: Option<String>,
    pub phone: Option<Phone>,
    pub email: Option<String>,
}

/// `apt`, not the table's `apartment` (ruling R3).
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub street: Option<String>,
    pub apt: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Insurance {
    #[serde(
        rename = "primaryInsurance",
        default,
        deserialize_with = "object::optional"
    )]
    pub primary: Option<InsuranceCard>,
    #[serde(
        rename = "secondaryInsurance",
        default,
        deserialize_with = "object::optional"
    )]
    pub secondary: Option<InsuranceCard>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsuranceCard {
    pub status: Option<String>,
    pub carrier: Option<String>,
    pub member_id: Option<String>,
    pub group_num: Option<String>,
    pub cardname: Option<String>,
    /// A number for both cards (ruling R4), and a birth date (R12).
    pub card_dob: Option<BirthMillis>,
    pub front_picture_image: Option<String>,
    pub back_picture_image: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub timestamp: Option<Millis>,
    pub image: Option<String>,
}

/// Sent as `consents` (ruling R2).
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub name: NonEmpty,
    pub value: bool,
    pub timestamp: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalId {
    pub source: Source,
    #[serde(rename = "sourceId")]
    pub source_id: Identifier,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewedTracker {
    pub message: Option<String>,
    #[serde(rename = "supportProgramId")]
    pub support_program_id: Identifier,
    pub status: Option<String>,
    /// Always `{key: userAction, value: viewedTracker}`; the dispatcher fills it in.
    #[serde(
        rename = "data",
        default,
        skip_serializing,
        deserialize_with = "object::optional"
    )]
    _data: Option<TrackerData>,
    #[serde(deserialize_with = "object::required")]
    pub patient: TrackerPatient,
    #[serde(rename = "sendDate", default, skip_serializing)]
    _send_date: Option<IgnoredAny>,
    #[serde(rename = "sourceName", default, skip_serializing)]
    _source_name: Option<IgnoredAny>,
    #[serde(rename = "eventName", default, skip_serializing)]
    _event_name: Option<IgnoredAny>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerPatient {
    pub id: Identifier,
    #[serde(rename = "phoneNumber")]
    pub phone_number: Phone,
    #[serde(
        rename = "externalIds",
        default,
        deserialize_with = "object::optional_list"
    )]
    pub external_ids: Option<Vec<ExternalId>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrackerData {
    key: TrackerDataKey,
    value: TrackerDataValue,
}

impl TrackerData {
    pub(super) const VIEWED_TRACKER: TrackerData = TrackerData {
        key: TrackerDataKey::UserAction,
        value: TrackerDataValue::ViewedTracker,
    };
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TrackerDataKey {
    #[serde(rename = "userAction")]
    UserAction,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TrackerDataValue {
    #[serde(rename = "viewedTracker")]
    ViewedTracker,
}
