//! A formatter that imports `example:hostile/missing`, which no host provides: loading it must
//! fail with an error naming that import.

wit_bindgen::generate!({ world: "hostile-import", path: "wit", generate_all });


struct HostileImport;

impl Guest for HostileImport {
    fn configure(_options: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn format(_event: Event, _context: Context) -> Result<Vec<Message>, String> {
        let value = example::hostile::missing::ping().to_string().into_bytes();
        Ok(vec![Message { value, key: None, headers: Vec::new(), topic: None }])
    }
}

export!(HostileImport);
