-- The PostgreSQL enum behind `immu_tests::models::Status`.
CREATE TYPE order_status AS ENUM ('open', 'shipped');
