-- Who resent or cancelled what, and when: support's actions are part of a delivery's
-- history, shown beside its attempts. No foreign key: resending an unrouted event
-- deletes its placeholder delivery, and the record of who did it must stay.
CREATE TABLE dispatcher.support_actions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id uuid        NOT NULL,
    event_id    bigint      NOT NULL,
    action      text        NOT NULL CHECK (action IN ('resend', 'cancel')),
    -- Who asked: `cli:<user>`, the name given at the support page's login, or the API's
    -- `X-Actor` header.
    actor       text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX support_actions_by_delivery ON dispatcher.support_actions (delivery_id, at);
