-- Run by the postgres image on its first start (docker-compose.yml): the chat example's
-- database, beside the "test" database of the test suite.
CREATE DATABASE chat;
