DROP TABLE model_routes;
