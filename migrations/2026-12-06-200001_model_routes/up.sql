-- More providers for one public model. A model's own provider_id and upstream_model stay its
-- first route (priority 0, weight 1); each row here adds another provider that serves it under
-- its own upstream name. Calls try routes by descending priority, routes of equal priority in
-- an order drawn by weight, and fail over to the next while no byte reached the client. What a
-- user pays is always the public model's price.
CREATE TABLE model_routes (
    id             BIGSERIAL   PRIMARY KEY,
    model_id       BIGINT      NOT NULL REFERENCES llm_models (id) ON DELETE CASCADE,
    -- A provider still routed to cannot be deleted: disable it, or delete the route first.
    provider_id    BIGINT      NOT NULL REFERENCES providers (id),
    upstream_model TEXT        NOT NULL CHECK (length(upstream_model) BETWEEN 1 AND 256),
    priority       INTEGER     NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    -- 0 keeps the route but never picks it while another of its priority is left.
    weight         INTEGER     NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 1000),
    enabled        BOOLEAN     NOT NULL DEFAULT true,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT model_routes_model_provider_upstream_key UNIQUE (model_id, provider_id, upstream_model)
);
CREATE INDEX model_routes_provider_id_idx ON model_routes (provider_id);
