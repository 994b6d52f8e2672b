//! Diesel's view of the shared schema in `migrations/` (kept in step by hand; checked by the schema test).

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        status -> Text,
        balance -> Numeric,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        held -> Numeric,
        session_generation -> Int8,
    }
}

diesel::table! {
    providers (id) {
        id -> Int8,
        name -> Text,
        kind -> Text,
        base_url -> Text,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    provider_keys (id) {
        id -> Int8,
        provider_id -> Int8,
        name -> Text,
        secret_ciphertext -> Bytea,
        key_hint -> Text,
        weight -> Int4,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    llm_models (id) {
        id -> Int8,
        name -> Text,
        provider_id -> Int8,
        upstream_model -> Text,
        kind -> Text,
        pricing -> Jsonb,
        max_output_tokens -> Int4,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        image_input_tokens -> Int4,
    }
}

diesel::table! {
    model_routes (id) {
        id -> Int8,
        model_id -> Int8,
        provider_id -> Int8,
        upstream_model -> Text,
        priority -> Int4,
        weight -> Int4,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    access_keys (id) {
        id -> Int8,
        user_id -> Int8,
        name -> Text,
        prefix -> Text,
        key_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    orders (id) {
        id -> Int8,
        order_no -> Text,
        user_id -> Int8,
        amount -> Numeric,
        status -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    balance_ledger (id) {
        id -> Int8,
        user_id -> Int8,
        delta -> Numeric,
        balance_after -> Numeric,
        kind -> Text,
        reference -> Text,
        note -> Nullable<Text>,
        actor_user_id -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    payment_events (id) {
        id -> Int8,
        event_id -> Text,
        order_no -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    usage_logs (id) {
        id -> Int8,
        request_id -> Uuid,
        user_id -> Int8,
        access_key_id -> Nullable<Int8>,
        model_id -> Nullable<Int8>,
        model_name -> Text,
        prompt_tokens -> Int8,
        completion_tokens -> Int8,
        cached_prompt_tokens -> Int8,
        images -> Int4,
        cost -> Numeric,
        created_at -> Timestamptz,
        priced_cost -> Nullable<Numeric>,
        held_amount -> Nullable<Numeric>,
        ledger_id -> Nullable<Int8>,
    }
}

diesel::table! {
    async_jobs (id) {
        id -> Int8,
        job_id -> Uuid,
        job_type -> Text,
        user_id -> Int8,
        access_key_id -> Nullable<Int8>,
        model_id -> Int8,
        status -> Text,
        request_payload -> Jsonb,
        result_payload -> Nullable<Jsonb>,
        error_message -> Nullable<Text>,
        attempts -> Int4,
        lease_expires_at -> Nullable<Timestamptz>,
        cost -> Nullable<Numeric>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        callback_url -> Nullable<Text>,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_secrets (user_id) {
        user_id -> Int8,
        sealed -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    login_failures (account) {
        account -> Text,
        attempts -> Int4,
        blocked_until -> Nullable<Timestamptz>,
        last_attempt_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        job_id -> Uuid,
        url -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    balance_holds (id) {
        id -> Int8,
        request_id -> Uuid,
        user_id -> Int8,
        amount -> Numeric,
        status -> Text,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        closed_at -> Nullable<Timestamptz>,
        access_key_id -> Nullable<Int8>,
    }
}

diesel::table! {
    billing_outbox (id) {
        id -> Int8,
        request_id -> Uuid,
        payload -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    call_stats (minute) {
        minute -> Timestamptz,
        ok -> Int8,
        client_errors -> Int8,
        provider_errors -> Int8,
        refused -> Int8,
        latency_ms_sum -> Int8,
        latency_ms_max -> Int8,
    }
}

diesel::table! {
    queue_samples (sampled_at) {
        sampled_at -> Timestamptz,
        invocation_queue -> Nullable<Int8>,
        billing_queue -> Nullable<Int8>,
        outbox -> Int8,
        pending_jobs -> Int8,
    }
}

diesel::joinable!(provider_keys -> providers (provider_id));
diesel::joinable!(llm_models -> providers (provider_id));
diesel::joinable!(model_routes -> providers (provider_id));
diesel::joinable!(model_routes -> llm_models (model_id));
diesel::joinable!(access_keys -> users (user_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(balance_ledger -> users (user_id));
diesel::joinable!(usage_logs -> users (user_id));
diesel::joinable!(async_jobs -> users (user_id));
diesel::joinable!(webhook_secrets -> users (user_id));
diesel::joinable!(async_jobs -> llm_models (model_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    providers,
    provider_keys,
    llm_models,
    model_routes,
    access_keys,
    orders,
    balance_ledger,
    payment_events,
    usage_logs,
    async_jobs,
    balance_holds,
    billing_outbox,
    webhook_deliveries,
    webhook_secrets,
    login_failures,
    call_stats,
    queue_samples,
);
