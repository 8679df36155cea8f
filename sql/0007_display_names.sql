-- 0007: a display name the backend sets through the server API (`PUT /api/users/{id}`),
-- shown where a user's token carries no name of its own (SimpleJWT's default access
-- token has `user_id` only). Kept apart from `name`, which is the token's and is
-- written again at every first connection.

ALTER TABLE users ADD COLUMN display_name TEXT;
