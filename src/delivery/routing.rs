//! Fan-out: which partners an outbox event goes to.
//!
//! Routing needs only the event's name, support program and patient; the whole event is
//! checked against the contract just before each send (see `payload`). The two ids it
//! reads are checked here already (R13: at most 255 characters), because the patient's id
//! is stored and indexed with each delivery: a few thousand characters of it are more
//! than PostgreSQL can index, and would make the whole routing batch fail.

use crate::config::Config;
use crate::contract::payload::{
    fits_identifier, EventKind, IDENTIFIER_TOO_LONG, MAX_IDENTIFIER_CHARS,
};
use crate::delivery::id::DeliveryIds;
use crate::delivery::state::DeliveryState;
use crate::delivery::NewDelivery;

/// The parts of an outbox row that routing looks at.
#[derive(Debug, Clone)]
pub struct UnroutedEvent {
    pub id: i64,
    pub event_name: String,
    pub is_object: bool,
    /// `supportProgramId`, when it is a string.
    pub support_program_id: Option<String>,
    /// `patient.id`, when it is a string.
    pub patient_id: Option<String>,
}

/// One delivery per partner of the event's support program, each with its own id of
/// `ids` (the routing transaction's).
///
/// An event that reaches no partner still gets one row (partner NULL) so support sees it:
/// `unrouted` when no partner takes its program, `invalid` when it cannot be routed at all.
pub fn route(config: &Config, event: &UnroutedEvent, ids: &mut DeliveryIds) -> Vec<NewDelivery> {
    // A patient id over R13's limit is kept in the outbox only: it is not an id to search
    // by, and stored with the delivery it could be too long to index.
    let patient_id = event.patient_id.clone().filter(|id| fits_identifier(id));
    let placeholder = |ids: &mut DeliveryIds, state, reason: Option<String>| {
        vec![NewDelivery {
            id: ids.next_id(),
            event_id: event.id,
            partner: None,
            event_name: event.event_name.clone(),
            patient_id: patient_id.clone(),
            state,
            last_error: reason,
        }]
    };
    let program = event.support_program_id.as_deref().unwrap_or_default();
    let patient = event.patient_id.as_deref().unwrap_or_default();
    let unroutable = if let Err(unknown) = EventKind::from_name(&event.event_name) {
        Some(unknown.0)
    } else if !event.is_object {
        Some("event must be an object".to_string())
    } else if program.is_empty() {
        Some("supportProgramId is required".to_string())
    } else if !fits_identifier(program) {
        Some(format!("supportProgramId {IDENTIFIER_TOO_LONG}"))
    } else if patient.is_empty() {
        Some("patient.id is required".to_string())
    } else if !fits_identifier(patient) {
        Some(format!("patient.id {IDENTIFIER_TOO_LONG}"))
    } else {
        None
    };
    if let Some(reason) = unroutable {
        return placeholder(ids, DeliveryState::Invalid, Some(reason));
    }
    let deliveries: Vec<NewDelivery> = config
        .partners_of(program)
        .map(|partner| NewDelivery {
            id: ids.next_id(),
            event_id: event.id,
            partner: Some(partner.name.clone()),
            event_name: event.event_name.clone(),
            patient_id: patient_id.clone(),
            state: DeliveryState::Pending,
            last_error: None,
        })
        .collect();
    if deliveries.is_empty() {
        // Named, so ops know which program to add to a partner's `support_programs`.
        return placeholder(
            ids,
            DeliveryState::Unrouted,
            Some(format!(
                "no partner is configured for support program {program}"
            )),
        );
    }
    deliveries
}

/// The one delivery of an event whose deliveries PostgreSQL refused to store (a value it
/// cannot index, a constraint of the site's own): `invalid`, never sent, with the
/// database's `reason`, so the events after it are routed. It carries as little of the
/// event as it can, since something in the event was refused: no partner, no patient id,
/// and the event's name cut to 255 characters (the contract's two names are far shorter).
/// Its id is of `ids`, the routing transaction's.
pub fn refused(
    event: &UnroutedEvent,
    reason: &impl std::fmt::Display,
    ids: &mut DeliveryIds,
) -> NewDelivery {
    NewDelivery {
        id: ids.next_id(),
        event_id: event.id,
        partner: None,
        event_name: event
            .event_name
            .chars()
            .take(MAX_IDENTIFIER_CHARS)
            .collect(),
        patient_id: None,
        state: DeliveryState::Invalid,
        last_error: Some(format!(
            "the database refused to store this event's deliveries: {reason}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;

    use super::*;
    use crate::delivery::id;

    fn config() -> Config {
        Config::parse(
            r#"
            [database]
            url = "postgres://127.0.0.1/db"
            [[partners]]
            name = "acme"
            support_programs = ["prog-1", "prog-2"]
            enrollment_url = "https://acme.example/e"
            user_action_url = "https://acme.example/a"
            [[partners]]
            name = "globex"
            support_programs = ["prog-1"]
            enrollment_url = "https://globex.example/e"
            user_action_url = "https://globex.example/a"
            "#,
            "test.toml",
            None,
            |_| None,
        )
        .unwrap()
    }

    /// Routed as a transaction whose `now()` is now.
    fn route_now(event: &UnroutedEvent) -> Vec<NewDelivery> {
        route(
            &config(),
            event,
            &mut DeliveryIds::made_at(chrono::Utc::now()),
        )
    }

    fn event(program: &str) -> UnroutedEvent {
        UnroutedEvent {
            id: 7,
            event_name: crate::contract::payload::ENROLLMENT.into(),
            is_object: true,
            support_program_id: Some(program.into()),
            patient_id: Some("p1".into()),
        }
    }

    #[test]
    fn an_event_goes_to_every_partner_of_its_program_with_distinct_ids() {
        let deliveries = route_now(&event("prog-1"));
        let partners: Vec<_> = deliveries
            .iter()
            .map(|d| d.partner.clone().unwrap())
            .collect();
        assert_eq!(partners, ["acme", "globex"]);
        assert_ne!(deliveries[0].id, deliveries[1].id);
        assert!(deliveries.iter().all(|d| d.state == DeliveryState::Pending));
    }

    #[test]
    fn an_event_of_an_unknown_program_is_kept_as_unrouted() {
        let deliveries = route_now(&event("prog-9"));
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].state, DeliveryState::Unrouted);
        assert_eq!(deliveries[0].partner, None);
        assert_eq!(
            deliveries[0].last_error.as_deref(),
            Some("no partner is configured for support program prog-9"),
            "names the program ops must add"
        );
    }

    #[test]
    fn an_event_without_a_program_is_invalid() {
        let mut broken = event("");
        broken.support_program_id = None;
        let deliveries = route_now(&broken);
        assert_eq!(deliveries[0].state, DeliveryState::Invalid);
        assert_eq!(
            deliveries[0].last_error.as_deref(),
            Some("supportProgramId is required")
        );
    }

    /// R13: the ids routing reads, over 255 characters, make the event invalid at once,
    /// naming the field; the overlong patient id is not copied to the delivery.
    #[test]
    fn an_event_whose_ids_are_over_255_characters_is_invalid_naming_the_field() {
        let long = "x".repeat(3_008);
        let mut event = event("prog-1");
        event.patient_id = Some(long.clone());
        let deliveries = route_now(&event);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].state, DeliveryState::Invalid);
        assert_eq!(
            deliveries[0].last_error.as_deref(),
            Some("patient.id must be at most 255 characters")
        );
        assert_eq!(deliveries[0].patient_id, None);

        let mut event = self::event(&long);
        event.patient_id = Some("é".repeat(255));
        let deliveries = route_now(&event);
        assert_eq!(
            deliveries[0].last_error.as_deref(),
            Some("supportProgramId must be at most 255 characters")
        );
        assert_eq!(
            deliveries[0].patient_id.as_deref(),
            Some("é".repeat(255).as_str())
        );

        let deliveries = route_now(&self::event(&"é".repeat(255)));
        assert_eq!(deliveries[0].state, DeliveryState::Unrouted);
    }

    /// Every delivery routing makes (to partners, an unrouted or invalid placeholder, the
    /// one of an event the database refused) has an id of the routing transaction's time,
    /// whatever this process's clock says: an hour from now here.
    #[test]
    fn every_delivery_id_is_of_the_routing_transactions_time() {
        let routed_at = chrono::Utc::now() + chrono::Duration::hours(1);
        let millisecond = routed_at
            .with_nanosecond(routed_at.timestamp_subsec_millis() * 1_000_000)
            .expect("a millisecond");
        let mut ids = DeliveryIds::made_at(routed_at);
        let mut invalid = event("");
        invalid.support_program_id = None;
        let mut made = route(&config(), &event("prog-1"), &mut ids);
        made.extend(route(&config(), &event("prog-9"), &mut ids));
        made.extend(route(&config(), &invalid, &mut ids));
        made.push(refused(&event("prog-2"), &"too long", &mut ids));

        let states: Vec<DeliveryState> = made.iter().map(|delivery| delivery.state).collect();
        use DeliveryState::*;
        assert_eq!(states, [Pending, Pending, Unrouted, Invalid, Invalid]);
        let times: Vec<_> = made
            .iter()
            .map(|delivery| id::made_at(delivery.id))
            .collect();
        assert_eq!(times, vec![Some(millisecond); 5]);
        assert!(
            made.windows(2).all(|pair| pair[0].id < pair[1].id),
            "increasing in the order they were made"
        );
    }
}
