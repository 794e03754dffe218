-- The grant each dataset validation and job runs on (services.common.identity): taken from
-- the user's request when the work was created, redeemed by this service (and its
-- workers) for delegations to storage long after the user's access token has expired.
-- Useless without the training service's own credential; void once the user's sessions
-- end. Dropped with the work.
CREATE TABLE work_grants (
    resource_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    grant_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
