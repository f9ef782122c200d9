-- A monitor may ask for W3C trace context on its checks (`traceparent`), so the checked
-- service's traces show observe's probe. Off unless asked: a check is an outside call to
-- someone else's service, and a trace id in it says which observe instance made it.
-- A constant default makes ADD COLUMN a metadata change: no rewrite, a short lock.
SET LOCAL lock_timeout = '10s';
ALTER TABLE monitors ADD COLUMN send_traceparent boolean NOT NULL DEFAULT false;
