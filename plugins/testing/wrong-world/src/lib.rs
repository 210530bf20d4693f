//! A well-formed component of another world: ferry must refuse it with a
//! clear error before anything is written.

wit_bindgen::generate!({
    inline: "
        package fixture:other@0.1.0;
        world greeter {
            export greet: func(name: string) -> string;
        }
    ",
});

struct Plugin;

impl Guest for Plugin {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}

export!(Plugin);
