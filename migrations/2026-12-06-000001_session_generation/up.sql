-- Sign-out (issue 15): a session token carries a stamp of its user's password hash and of this
-- generation; signing out adds one, so every token issued before stops working at its next
-- request (the user row is read on every token request anyway: no extra query).
ALTER TABLE users ADD COLUMN session_generation BIGINT NOT NULL DEFAULT 0
    CONSTRAINT users_session_generation_check CHECK (session_generation >= 0);
